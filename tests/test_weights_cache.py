"""The processed-weights cache (common/weights_cache.py): identical model, corrupt or stale entries
rebuilt and never used, a read-only or full cache folder tolerated with one line of explanation.

Ground truth is the uncached route (common.model.load_local_folder: Hugging Face weights processed
by TransformerLens in memory), run on the same folder.
"""

import errno
import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from common import disk_cache, weights_cache
from common.model import _load, load_local_folder

PROMPT = [50256, 3797, 3290, 2266, 4171, 3797, 15496, 11, 995, 0, 3797]


def make_folder(path: Path, seed: int = 0) -> Path:
    """A small random Hugging Face GPT-2 folder (real vocabulary size, 2 layers, d_model 32) whose
    layer norms and biases are far from their defaults, so folding and centring change them."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=50257))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or "ln_f" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    model.save_pretrained(str(path))
    return path


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([PROMPT]))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("L1H5_CACHE", str(root))
    monkeypatch.delenv(weights_cache.ENV_SWITCH, raising=False)
    disk_cache.NOTED.clear()
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def reference(folder):
    """Logits of the uncached route."""
    return logits(load_local_folder(folder))


@pytest.fixture(scope="module")
def pristine(folder, tmp_path_factory):
    """A cache folder holding a valid entry for ``folder``, built once for the module."""
    import shutil

    root = tmp_path_factory.mktemp("pristine-cache")
    old = os.environ.get("L1H5_CACHE")
    os.environ["L1H5_CACHE"] = str(root)
    try:
        _load(str(folder), "cpu")
    finally:
        if old is None:
            del os.environ["L1H5_CACHE"]
        else:
            os.environ["L1H5_CACHE"] = old
    assert len(entries(root)) == 1
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cache_with_entry(pristine, cache):
    """``cache`` holding a copy of the pristine entry (a copy: new inodes, so it is re-verified)."""
    import shutil

    shutil.copytree(pristine, cache)
    return cache


def entries(cache: Path) -> list[Path]:
    root = cache / "processed"
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.exists() else []


def count_builds(monkeypatch) -> list:
    """Record every uncached build (the cache is bypassed exactly when this list grows)."""
    import common.model as model_module

    calls = []
    real = model_module.load_local_folder

    def counted(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(model_module, "load_local_folder", counted)
    return calls


def test_cached_model_is_identical_to_uncached(folder, reference, cache, monkeypatch, capsys):
    builds = count_builds(monkeypatch)
    cold = _load(str(folder), "cpu")  # builds, writes the entry, maps it back
    warm = _load(str(folder), "cpu")  # from the entry only
    assert len(builds) == 1
    assert len(entries(cache)) == 1
    assert warm._l1h5_processed_cache == str(entries(cache)[0])
    uncached = load_local_folder(folder)
    assert torch.equal(logits(cold), reference) and torch.equal(logits(warm), reference)
    for name, p in uncached.state_dict().items():
        assert torch.equal(warm.state_dict()[name], p), name
    assert warm.cfg.to_dict() == uncached.cfg.to_dict()
    assert warm.tokenizer.encode(" cat dog") == uncached.tokenizer.encode(" cat dog")
    from common.outputs import model_fingerprint

    uncached._l1h5_fingerprint = None
    assert warm._l1h5_fingerprint == model_fingerprint(uncached)
    # The warm model's weights are pages of the cache file, not copies.
    weights = entries(cache)[0] / weights_cache.WEIGHTS
    assert warm.W_E.untyped_storage().nbytes() <= weights.stat().st_size
    assert "note:" not in capsys.readouterr().err


def test_planted_model_cached_equals_uncached(planted_model):
    """The session's planted model (load_model: through the cache) and a warm reload from the
    entry both equal the uncached local-folder route exactly."""
    from common.planted import planted_folder

    uncached = load_local_folder(planted_folder())
    warm = _load("planted", "cpu")
    assert warm._l1h5_processed_cache
    tokens = torch.tensor([PROMPT])
    want = uncached(tokens)
    assert torch.equal(planted_model(tokens), want)
    assert torch.equal(warm(tokens), want)


def test_copied_entry_is_verified_then_trusted(folder, cache_with_entry, monkeypatch):
    """A copied entry (new inode and ctime) is hashed once, then its new stat signature is
    recorded, so later loads skip the hash."""
    hashed = []
    real = disk_cache.sha256_file
    monkeypatch.setattr(disk_cache, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    builds = count_builds(monkeypatch)
    _load(str(folder), "cpu")
    _load(str(folder), "cpu")
    assert builds == [] and hashed == [weights_cache.WEIGHTS]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _flip_byte_keep_mtime(path: Path) -> None:
    """One byte of tensor data changed, the modification time put back (a size-and-mtime check
    would miss it)."""
    st = path.stat()
    _flip_byte(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 3)


def _garbage_entry_json(path: Path) -> None:
    (path.parent / disk_cache.ENTRY).write_text("{not json")


def _stale_versions(path: Path) -> None:
    meta_path = path.parent / disk_cache.ENTRY
    meta = json.loads(meta_path.read_text())
    meta["key"]["versions"]["transformer_lens"] = "0.0.1"
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, message", [
    (_flip_byte_keep_mtime, "checksum mismatch"),
    (_truncate, "bytes"),
    (_garbage_entry_json, "entry.json does not parse"),
    (_stale_versions, "stale"),
])
def test_damaged_entry_is_detected_and_rebuilt(folder, reference, cache_with_entry, monkeypatch, capsys, damage, message):
    cache = cache_with_entry
    weights = entries(cache)[0] / weights_cache.WEIGHTS
    damage(weights)
    builds = count_builds(monkeypatch)
    capsys.readouterr()
    model = _load(str(folder), "cpu")
    err = capsys.readouterr().err
    assert len(builds) == 1, "a damaged entry must be rebuilt, not used"
    _check_one_line_note(err, message, "rebuilding it")
    assert torch.equal(logits(model), reference)
    again = _load(str(folder), "cpu")  # the rebuilt entry is valid
    assert len(builds) == 1 and torch.equal(logits(again), reference)


def test_changed_source_weights_give_a_new_entry(tmp_path, cache, monkeypatch):
    folder = make_folder(tmp_path / "m", seed=1)
    first = logits(_load(str(folder), "cpu"))
    old_entry = entries(cache)[0]
    make_folder(folder, seed=2)  # same path, new weights
    builds = count_builds(monkeypatch)
    second = _load(str(folder), "cpu")
    assert len(builds) == 1
    assert torch.equal(logits(second), logits(load_local_folder(folder)))
    assert not torch.equal(logits(second), first)
    assert entries(cache) == [Path(second._l1h5_processed_cache)] and old_entry not in entries(cache)


def test_switch_off_builds_every_time(folder, reference, cache, monkeypatch):
    monkeypatch.setenv(weights_cache.ENV_SWITCH, "0")
    builds = count_builds(monkeypatch)
    model = _load(str(folder), "cpu")
    assert len(builds) == 1 and not entries(cache) and torch.equal(logits(model), reference)


# ----------------------------------------------------------------------------------------------
# a cache folder that cannot be written
# ----------------------------------------------------------------------------------------------


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextmanager
def read_only(path: Path):
    """``path`` made read-only for this process: permissions for a normal user; for root (who
    ignores them) a read-only bind mount of the folder onto itself."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")] if p.is_dir()}
        for p in modes:
            p.chmod(0o555)
        try:
            yield path
        finally:
            for p, m in modes.items():
                p.chmod(m)
        return
    if not (_mount("--bind", str(path), str(path)) and _mount("-o", "remount,ro,bind", str(path))):
        subprocess.run(["umount", str(path)], capture_output=True)
        pytest.skip("root without mount rights: cannot make a read-only folder")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)  # lazy: the model still maps the file


def _check_one_line_note(err: str, *words: str) -> None:
    """Exactly one note line (transformers' own progress bars may also write to stderr)."""
    lines = [line for line in err.splitlines() if "note:" in line]
    assert len(lines) == 1 and lines[0].startswith("note:") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_read_only_empty_cache_runs_uncached_with_one_line(folder, reference, cache, capsys):
    cache.mkdir()
    with read_only(cache):
        model = _load(str(folder), "cpu")
        assert torch.equal(logits(model), reference)
        assert not getattr(model, "_l1h5_processed_cache", None)
        _check_one_line_note(capsys.readouterr().err, "cannot write", str(cache), "continuing without it")
        assert not (cache / "processed").exists()


def test_read_only_populated_cache_is_used(folder, reference, cache_with_entry, monkeypatch, capsys):
    cache = cache_with_entry
    builds = count_builds(monkeypatch)
    with read_only(cache):
        model = _load(str(folder), "cpu")
        assert builds == [] and model._l1h5_processed_cache
        assert torch.equal(logits(model), reference)
    assert "note:" not in capsys.readouterr().err


def test_full_cache_folder_runs_uncached_with_one_line(folder, reference, cache, capsys):
    """A real full file system (a 1 MB tmpfs, root only), the entry being ~13 MB."""
    cache.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(cache)):
        pytest.skip("needs root with mount rights for a small tmpfs")
    try:
        model = _load(str(folder), "cpu")
        assert torch.equal(logits(model), reference)
        _check_one_line_note(capsys.readouterr().err, "cannot write", "continuing without it")
        assert entries(cache) == []  # nothing half-written left behind
        assert not [p for p in (cache / "processed").iterdir() if p.name.startswith(".")]
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=True)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_write_errors_are_one_line_and_leave_nothing(folder, reference, cache, monkeypatch, capsys, code):
    """Every machine (no mount rights needed): the writer fails as a full or read-only disk would."""
    def failing(state_dict, path):
        Path(path).write_bytes(b"partial")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(weights_cache, "_save_state_dict", failing)
    model = _load(str(folder), "cpu")
    assert torch.equal(logits(model), reference)
    _check_one_line_note(capsys.readouterr().err, os.strerror(code), "continuing without it")
    assert entries(cache) == [] and not [p for p in (cache / "processed").iterdir() if p.name.startswith(".")]
