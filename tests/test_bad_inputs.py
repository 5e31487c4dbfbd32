"""Bad input stops a run with one line naming the problem and the way out, a non-zero exit, and
nothing written; a rerun for another head does not leave the earlier head's outputs beside its own.

The broken model folders are built here from the planted model's folder
(``common.planted.planted_folder()``): a truncated ``model.safetensors`` (what an interrupted
download leaves), and a model whose vocabulary (1,000 tokens) is smaller than the GPT-2 tokenizer's
50,257 (BOS is id 50256). Each is run as a user would (a subprocess: the exit code and the whole
stderr are the point) through both start-up routes, ``start`` (characterize_head) and
``start_head`` (svd_group_scaling_heatmap).
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_main, run_script

CHEAP = ["--n-prompts", "4", "--seq-len", "12"]


@pytest.fixture(scope="module")
def planted_dir(planted_cache):
    from common.planted import planted_folder

    return planted_folder()


def copy_folder(src, dst, skip=("model.safetensors",)):
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name not in skip:
            shutil.copy(f, dst / f.name)
    return dst


def assert_one_line_error(proc, *needles):
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(err) == 1 and err[0].startswith("error: "), proc.stderr[-3000:]
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


@pytest.mark.parametrize("script", ["characterize_head.py", "svd_group_scaling_heatmap.py"])
def test_corrupt_safetensors(planted_dir, tmp_path, script):
    folder = copy_folder(planted_dir, tmp_path / "gpt2-corrupt")
    (folder / "model.safetensors").write_bytes((planted_dir / "model.safetensors").read_bytes()[:5000])
    out = tmp_path / "out" / "run"
    proc = run_script(script, "--model", str(folder), "--out", str(out), *(CHEAP if "characterize" in script else []),
                      check=False)
    line = assert_one_line_error(proc, str(folder / "model.safetensors"), "corrupt or truncated",
                                 "save or download it again")
    assert "SafetensorError" in line
    assert not (tmp_path / "out").exists(), "nothing may be written, not even the folder"


@pytest.mark.parametrize("script", ["characterize_head.py", "svd_group_scaling_heatmap.py"])
def test_vocabulary_smaller_than_the_tokenizer(planted_dir, tmp_path, script):
    from safetensors.torch import load_file, save_file

    folder = copy_folder(planted_dir, tmp_path / "gpt2-vocab1000")
    sd = load_file(str(planted_dir / "model.safetensors"))
    assert sd["transformer.wte.weight"].shape[0] == 50257
    sd = {k: (v[:1000].clone() if k.endswith("wte.weight") else v) for k, v in sd.items()}
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vocab_size"] = 1000
    (folder / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    proc = run_script(script, "--model", str(folder), "--out", str(out), *(CHEAP if "characterize" in script else []),
                      check=False)
    assert_one_line_error(proc, str(folder), "1,000 tokens", "50,257", "vocab_size >= 50,257")
    assert "IndexError" not in proc.stderr
    assert not out.exists()


def test_failed_start_up_leaves_no_folder(tmp_path, planted_model, capsys):
    import characterize_head

    out = tmp_path / "a" / "b"
    with pytest.raises(SystemExit, match="--head 99 out of range"):
        characterize_head.main(["--model", "planted", "--head", "99", "--out", str(out), *CHEAP])
    assert not (tmp_path / "a").exists()
    with pytest.raises(SystemExit, match="not writable"):  # still checked before any work
        characterize_head.main(["--model", "planted", "--out", "/proc/x/y", *CHEAP])
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match="not writable"):  # a parent that is a file
        characterize_head.main(["--model", "planted", "--out", str(tmp_path / "file" / "sub"), *CHEAP])


def test_rerun_for_another_head_clears_the_earlier_heads_outputs(tmp_path, planted_model, capsys):
    out = tmp_path / "ch"
    run_main("characterize_head.py", "--model", "planted", "--head", "5", "--out", str(out), *CHEAP)
    assert (out / "attention_L1H5.html").exists()
    (out / "my_notes.txt").write_text("mine")  # not an output of the run: never touched
    capsys.readouterr()
    run_main("characterize_head.py", "--model", "planted", "--head", "5", "--out", str(out), *CHEAP)
    assert "removed" not in capsys.readouterr().err  # the same head: overwritten, nothing to say
    run_main("characterize_head.py", "--model", "planted", "--layer", "1", "--head", "4", "--out", str(out), *CHEAP)
    err = capsys.readouterr().err
    assert "earlier run (model planted, layer 1, head 5)" in err and "attention_L1H5.html" in err
    assert not (out / "attention_L1H5.html").exists()
    assert (out / "attention_L1H4.html").exists() and (out / "my_notes.txt").read_text() == "mine"
    assert json.loads((out / "summary.json").read_text())["head"] == 4
    expected = {"attention_L1H4.html", "head_scores.csv", "head_scores.png", "mass_split.csv", "mass_split.png",
                "overlap_sensitivity.csv", "meta.json", "summary.json", "my_notes.txt"}
    assert {f.name for f in out.iterdir() if not f.name.startswith(".")} == expected


def test_folder_from_before_the_manifest_is_named_stale(tmp_path, planted_model, capsys):
    out = tmp_path / "old"
    run_main("characterize_head.py", "--model", "planted", "--out", str(out), *CHEAP)
    from common.outputs import manifest_path

    manifest_path(out).unlink()  # as a folder written by an earlier version of the code
    capsys.readouterr()
    run_main("characterize_head.py", "--model", "planted", "--head", "3", "--out", str(out), *CHEAP)
    err = capsys.readouterr().err
    assert "may be stale" in err and "attention_L1H5.html" in err
    assert (out / "attention_L1H5.html").exists() and (out / "attention_L1H3.html").exists()  # named, not deleted
