"""token_freq.py and common/freq.py: exact counts, worker-independence, offline error, demo run."""

import json
import os
import sys

import pandas as pd
import pytest
from conftest import run_main, run_script

import token_freq
from common import freq

TEXT = "the cat sat\nthe cat\n\n Monday, Monday!\n"
# Counted by hand: each line is encoded with its newline; the empty line is one "\n".
EXPECTED = {"the": 2, " cat": 2, " sat": 1, "\n": 4, " Monday": 2, ",": 1, "!": 1}


def _ids(tokenizer, pieces):
    out = {}
    for piece, n in pieces.items():
        ids = tokenizer.encode(piece, add_special_tokens=False)
        assert len(ids) == 1, piece
        out[ids[0]] = n
    return out


def test_exact_counts_on_hand_written_text(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text(TEXT)
    out = tmp_path / "out"
    assert token_freq.main(["--text", str(tmp_path / "a.txt"), "--out", str(out), "--workers", "1", "--no-plot"]) == 0
    df = freq.load_freq_table(out / "token_freq.csv")
    assert dict(zip(df["id"], df["count"])) == _ids(tokenizer, EXPECTED)
    assert dict(zip(df["token"], df["count"])) == EXPECTED
    # sorted by count desc, ties by id asc
    assert df["count"].is_monotonic_decreasing
    for _, g in df.groupby("count"):
        assert g["id"].is_monotonic_increasing
    assert list(df.columns) == ["token", "id", "count"]


def test_folder_crlf_and_workers_give_identical_tables(tmp_path, tokenizer):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text(TEXT * 40)
    (corpus / "sub" / "b.txt").write_bytes(TEXT.replace("\n", "\r\n").encode() * 40)  # Windows line ends
    (corpus / "ignored.md").write_text("zebra zebra zebra\n")
    tables = []
    for w in ("1", "2"):
        out = tmp_path / f"w{w}"
        # tiny batches so that the work really is split across many batches and both workers
        token_freq.main(["--text", str(corpus), "--out", str(out), "--workers", w, "--batch-bytes", "64", "--no-plot"])
        tables.append((out / "token_freq.csv").read_bytes())
    assert tables[0] == tables[1]
    df = freq.load_freq_table(tmp_path / "w1")
    assert dict(zip(df["token"], df["count"])) == {k: 80 * v for k, v in EXPECTED.items()}


def test_count_tokens_matches_naive_loop(tokenizer):
    from collections import Counter

    from common.demo_corpus import demo_lines

    lines = demo_lines(200, seed=3)
    naive = Counter(i for line in lines for i in tokenizer.encode(line))
    counts = freq.count_tokens(freq.string_batches(lines, 500), workers=1, tokenizer=tokenizer)
    assert {i: int(counts[i]) for i in counts.nonzero()[0]} == dict(naive)


@pytest.mark.parametrize("streaming", [False, True])
def test_dataset_route_with_a_stand_in_dataset(tmp_path, monkeypatch, streaming):
    """The `datasets` route (WikiText-103 by default) with a local stand-in for load_dataset."""
    import datasets

    seen = {}

    def fake_load_dataset(name, config, split, streaming=False):
        seen.update(name=name, config=config, split=split, streaming=streaming)
        ds = datasets.Dataset.from_dict({"text": TEXT.splitlines(keepends=True) * 3000})
        return ds.to_iterable_dataset() if streaming else ds

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = tmp_path / "ds"
    argv = ["--out", str(out), "--workers", "2", "--no-plot"] + (["--streaming"] if streaming else [])
    assert token_freq.main(argv) == 0
    assert seen == {"name": "Salesforce/wikitext", "config": "wikitext-103-raw-v1", "split": "train",
                    "streaming": streaming}
    df = freq.load_freq_table(out)
    assert dict(zip(df["token"], df["count"])) == {k: 3000 * v for k, v in EXPECTED.items()}
    with pytest.raises(SystemExit, match="no column"):
        token_freq.main(argv + ["--text-column", "body"])


def test_top_tokens_from_table_and_fallback(tmp_path, tokenizer):
    from common.prompts import category_token_ids

    table = pd.DataFrame({"token": ["a", "b", "<eot>", "c"], "id": [64, 65, 50256, 66], "count": [5, 9, 100, 5]})
    table.to_csv(tmp_path / "token_freq.csv", index=False)
    ids, source = freq.resolve_top_tokens("planted", 3, path=tmp_path / "token_freq.csv")
    assert ids == [65, 64, 66] and "token_freq.csv" in source  # BOS dropped, ties by id
    ids, source = freq.resolve_top_tokens("planted", 5, path=tmp_path)
    first_cat = next(iter(category_token_ids(tokenizer).values()))[0]
    assert ids[:3] == [65, 64, 66] and ids[3] == first_cat and "fallback" in source
    # no table at all: category words first, then ids ascending, never BOS
    ids = freq.fallback_order()
    n_cat = sum(len(v) for v in category_token_ids(tokenizer).values())
    assert set(ids[:n_cat]) == {t for v in category_token_ids(tokenizer).values() for t in v}
    assert ids[n_cat:n_cat + 3] == [0, 1, 2] and 50256 not in ids and len(ids) == 50256


def test_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit, match="no such file"):
        token_freq.main(["--text", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="no files matching"):
        token_freq.main(["--text", str(tmp_path), "--glob", "*.none", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="not writable"):
        token_freq.main(["--text", str(tmp_path), "--out", "/proc/x/token_freq"])
    with pytest.raises(SystemExit) as exc:
        token_freq.main(["--workers", "0"])
    assert exc.value.code == 2 and "--workers must be >= 1" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("token,count\nx,1\n")
    with pytest.raises(SystemExit, match="lacks column"):
        freq.load_freq_table(bad)


def test_help(capsys):
    # in-process: a subprocess would spend ~10 s importing transformer_lens just to print help
    with pytest.raises(SystemExit) as exc:
        token_freq.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "--text" in out and "--workers" in out and "WikiText-103" in out


def test_offline_without_corpus_is_a_clear_error(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc = run_script("token_freq.py", "--out", str(tmp_path / "out"), check=False, timeout=120)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert proc.returncode != 0
    assert "error: could not load the corpus" in proc.stderr and "--text" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "token_freq.csv").exists()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("token_freq") / "demo"
    run_main("token_freq.py", "--model", "planted", "--out", str(out), "--workers", "1")
    return out


def test_planted_demo_end_to_end(demo_run, tokenizer):
    from common.prompts import category_token_ids

    out = demo_run
    for f in ("token_freq.csv", "token_freq.png", "summary.json", "meta.json"):
        assert (out / f).stat().st_size > 0, f
    df = freq.load_freq_table(out)
    cats = {t for v in category_token_ids(tokenizer).values() for t in v}
    assert cats <= set(df["id"])  # every planted category word occurs in the demo corpus
    assert df["count"].sum() > 20000
    ids = freq.top_tokens("planted", 600, path=out / "token_freq.csv")
    assert cats <= set(ids)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_tokens"] == df["count"].sum() and summary["n_distinct"] == len(df)
    assert set(summary["category_ids"]) == cats
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n_tokens"] == summary["n_tokens"] and meta["corpus"] == summary["corpus"]


def test_report_line(tmp_path, capsys):
    (tmp_path / "a.txt").write_text(TEXT)
    token_freq.main(["--text", str(tmp_path / "a.txt"), "--out", str(tmp_path / "o"), "--workers", "1", "--no-plot"])
    out = capsys.readouterr().out
    assert "13 tokens (7 distinct)" in out and "tokens/s" in out  # 13 = sum(EXPECTED.values())
    assert not (tmp_path / "o" / "token_freq.png").exists()  # --no-plot


def test_render_draws_the_figure_from_saved_files_only(demo_run, tmp_path, monkeypatch):
    """render() on a copy of token_freq.csv + summary.json + meta.json (no tokenizer, no corpus)
    redraws token_freq.png exactly as the run drew it."""
    import shutil

    import common.gpt2_tokenizer

    copy = tmp_path / "copy"
    shutil.copytree(demo_run, copy, ignore=shutil.ignore_patterns("*.png"))
    assert not (copy / "token_freq.png").exists()

    def no_tokenizer(*a, **k):
        raise AssertionError("render must not need the tokenizer")

    monkeypatch.setattr(common.gpt2_tokenizer, "load_tokenizer", no_tokenizer)
    assert [p.name for p in token_freq.render(copy)] == ["token_freq.png"]
    assert (copy / "token_freq.png").read_bytes() == (demo_run / "token_freq.png").read_bytes()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
