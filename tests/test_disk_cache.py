"""The cache-entry protocol (common/disk_cache.py) on a toy cache whose data is a few bytes:
the key digest, absent / valid / corrupt / stale entries, an unwritable cache folder, interrupted
and racing writers. Expected digests and checksums are computed here with hashlib from literal
JSON and bytes, not through the module."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from common import disk_cache
from conftest import ROOT

DATA = "data.bin"
KEY = {"format": 1, "source": "toy", "params": {"n": 3, "scale": 0.5}}
PAYLOAD = b"cached bytes \x00\x01\x02 of the toy cache"


@pytest.fixture(autouse=True)
def fresh_notes():
    disk_cache.NOTED.clear()


def write_payload(payload: bytes = PAYLOAD):
    def write(path):
        path.write_bytes(payload)
        return {"n_bytes_written": len(payload)}
    return write


def load_bytes(path, meta):
    return path.read_bytes()


def note_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def hidden(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------------------------
# the key digest
# ----------------------------------------------------------------------------------------------


def test_digest_is_sha256_of_sorted_json_and_ignores_key_order():
    written_out = b'{"format": 1, "params": {"n": 3, "scale": 0.5}, "source": "toy"}'
    want = hashlib.sha256(written_out).hexdigest()[:24]
    reordered = {"params": {"scale": 0.5, "n": 3}, "source": "toy", "format": 1}
    assert disk_cache.digest(KEY) == disk_cache.digest(reordered) == want
    assert disk_cache.digest({**KEY, "params": {"n": 4, "scale": 0.5}}) != want
    assert disk_cache.digest({**KEY, "format": 2}) != want


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------


def test_absent_entry_reads_as_none_without_loading(tmp_path):
    def must_not_load(path, meta):
        raise AssertionError("an absent entry must not be loaded")

    assert disk_cache.read_entry(tmp_path / "nothing", KEY, DATA, "toy", must_not_load) is None
    half = tmp_path / "half"  # data but no entry.json: not an entry
    half.mkdir()
    (half / DATA).write_bytes(PAYLOAD)
    assert disk_cache.read_entry(half, KEY, DATA, "toy", must_not_load) is None


def test_valid_entry_is_read_back_with_its_fields(tmp_path, capfd):
    entry = tmp_path / "cache" / "e"
    disk_cache.write_entry(entry, KEY, DATA, write_payload())
    assert sorted(p.name for p in entry.iterdir()) == [DATA, "entry.json"]
    assert hidden(entry.parent) == []
    meta = json.loads((entry / "entry.json").read_text())
    assert meta["key"] == KEY and meta["n_bytes_written"] == len(PAYLOAD)
    assert meta["bytes"] == len(PAYLOAD) and meta["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    got = disk_cache.read_entry(entry, KEY, DATA, "toy", lambda path, m: (path.read_bytes(), m["n_bytes_written"]))
    assert got == (PAYLOAD, len(PAYLOAD))
    reordered = json.loads(json.dumps(KEY, sort_keys=True))  # an equal key built in another order
    assert disk_cache.read_entry(entry, reordered, DATA, "toy", load_bytes) == PAYLOAD
    assert capfd.readouterr().err == ""


def _flip_keep_size_and_mtime(entry):
    path = entry / DATA
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _truncate(entry):
    (entry / DATA).write_bytes(PAYLOAD[:5])


def _garbage_json(entry):
    (entry / "entry.json").write_text("{not json")


def _data_missing(entry):
    (entry / DATA).unlink()


@pytest.mark.parametrize("damage, reason", [
    (_flip_keep_size_and_mtime, "checksum mismatch"),
    (_truncate, "has 5 bytes"),
    (_garbage_json, "does not parse"),
    (_data_missing, "missing"),
])
def test_corrupt_entry_is_noted_removed_and_rewritten(tmp_path, capfd, damage, reason):
    entry = tmp_path / "e"
    disk_cache.write_entry(entry, KEY, DATA, write_payload())
    damage(entry)
    assert disk_cache.read_entry(entry, KEY, DATA, "toy", load_bytes) is None
    (line,) = note_lines(capfd.readouterr().err)
    assert line.startswith(f"note: toy cache entry {entry} is ") and reason in line and line.endswith("rebuilding it")
    assert not entry.exists()
    disk_cache.write_entry(entry, KEY, DATA, write_payload())
    assert disk_cache.read_entry(entry, KEY, DATA, "toy", load_bytes) == PAYLOAD
    assert capfd.readouterr().err == ""


def test_entry_under_another_key_is_stale_and_rewritten(tmp_path, capfd):
    entry = tmp_path / "e"
    disk_cache.write_entry(entry, KEY, DATA, write_payload())
    other = {**KEY, "params": {"n": 4, "scale": 0.5}}
    assert disk_cache.read_entry(entry, other, DATA, "toy", load_bytes) is None
    (line,) = note_lines(capfd.readouterr().err)
    assert "stale" in line and "rebuilding it" in line
    disk_cache.write_entry(entry, other, DATA, write_payload(b"other data"))
    assert disk_cache.read_entry(entry, other, DATA, "toy", load_bytes) == b"other data"
    assert disk_cache.read_entry(entry, KEY, DATA, "toy", load_bytes) is None  # the old key no longer matches


@pytest.mark.parametrize("error, words", [
    (disk_cache.InvalidEntry("corrupt (holds 2 rows, 3 were written)"), "corrupt (holds 2 rows"),
    (ValueError("bad pickle"), "unreadable (ValueError: bad pickle)"),
])
def test_data_that_does_not_load_is_an_invalid_entry(tmp_path, capfd, error, words):
    entry = tmp_path / "e"
    disk_cache.write_entry(entry, KEY, DATA, write_payload())

    def failing(path, meta):
        raise error

    assert disk_cache.read_entry(entry, KEY, DATA, "toy", failing) is None
    (line,) = note_lines(capfd.readouterr().err)
    assert words in line and line.endswith("rebuilding it")
    assert not entry.exists()


def test_verified_entry_is_not_hashed_again(tmp_path, monkeypatch):
    """The checksum is recomputed when the data file's stat signature changed (here: a copy, new
    inode), then recorded, so the next read costs a stat only."""
    import shutil

    first = tmp_path / "first"
    disk_cache.write_entry(first, KEY, DATA, write_payload())
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    hashed = []
    real = disk_cache.sha256_file
    monkeypatch.setattr(disk_cache, "sha256_file", lambda p: hashed.append(p) or real(p))
    for _ in range(3):
        assert disk_cache.read_entry(copy, KEY, DATA, "toy", load_bytes) == PAYLOAD
    assert hashed == [copy / DATA]


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------


def cached_value(entry, compute):
    """A cache built on the protocol as the repository's caches are: read, else compute and write;
    an unwritable folder means the computed value and one note."""
    got = disk_cache.read_entry(entry, KEY, DATA, "toy", load_bytes)
    if got is not None:
        return got
    value = compute()
    try:
        disk_cache.write_entry(entry, KEY, DATA, write_payload(value))
    except OSError as exc:
        disk_cache.note_unwritable("toy", entry.parent, exc)
    return value


def test_unwritable_cache_folder_gives_one_note_and_still_computes(tmp_path, capfd):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    entry = blocker / "toy" / "e"
    computed = []
    for _ in range(2):
        assert cached_value(entry, lambda: computed.append(1) or PAYLOAD) == PAYLOAD
    assert len(computed) == 2  # nothing was cached, every call computed
    (line,) = note_lines(capfd.readouterr().err)
    assert line.startswith(f"note: cannot write the toy cache in {blocker / 'toy'} (")
    assert "continuing without it" in line
    assert blocker.read_text() == "a file where the cache folder should be"


def test_read_only_cache_folder_still_serves_its_entries(tmp_path, capfd):
    entry = tmp_path / "cache" / "e"
    assert cached_value(entry, lambda: PAYLOAD) == PAYLOAD
    folders = [tmp_path / "cache", entry]
    modes = [f.stat().st_mode for f in folders]
    for f in folders:
        f.chmod(0o555)  # (root writes anyway; then this checks the read only)
    try:
        assert cached_value(entry, lambda: pytest.fail("a valid entry must be read, not computed")) == PAYLOAD
    finally:
        for f, m in zip(folders, modes):
            f.chmod(m)
    assert capfd.readouterr().err == ""


def test_failing_writer_leaves_nothing(tmp_path):
    entry = tmp_path / "cache" / "e"

    def failing(path):
        path.write_bytes(PAYLOAD[:7])
        raise OSError(28, os.strerror(28))

    with pytest.raises(OSError):
        disk_cache.write_entry(entry, KEY, DATA, failing)
    assert list((tmp_path / "cache").iterdir()) == []
    assert disk_cache.read_entry(entry, KEY, DATA, "toy", load_bytes) is None


KILLED_WRITER = r'''
import os, sys
from pathlib import Path
from common import disk_cache

def write(path):
    path.write_bytes(b"half of the da")
    os._exit(9)  # killed mid-write: no clean-up runs

disk_cache.write_entry(Path(sys.argv[1]), {"k": 1}, "data.bin", write)
'''


def test_killed_writer_leaves_no_entry_that_reads_as_valid(tmp_path, capfd):
    entry = tmp_path / "cache" / "e"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(entry)], cwd=ROOT, capture_output=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    leftovers = hidden(tmp_path / "cache")
    assert len(leftovers) == 1 and not entry.exists()  # the temporary folder, never renamed
    key = {"k": 1}
    assert disk_cache.read_entry(entry, key, DATA, "toy", load_bytes) is None
    disk_cache.write_entry(entry, key, DATA, write_payload())  # a later run writes its entry
    assert disk_cache.read_entry(entry, key, DATA, "toy", load_bytes) == PAYLOAD
    assert capfd.readouterr().err == ""


def test_a_rename_that_fails_for_another_reason_is_an_error(tmp_path, monkeypatch):
    """Only "another writer's entry is already there" excuses a failed rename."""
    from pathlib import Path

    entry = tmp_path / "cache" / "e"

    def refuse(self, target):
        raise OSError(18, os.strerror(18))

    monkeypatch.setattr(Path, "rename", refuse)
    with pytest.raises(OSError):
        disk_cache.write_entry(entry, KEY, DATA, write_payload())
    monkeypatch.undo()
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_writer_that_lost_the_race_keeps_the_winners_entry(tmp_path, monkeypatch):
    """Another process renames its complete entry into place just before ours: our rename fails,
    theirs is kept and read (same key, so the same data)."""
    entry = tmp_path / "cache" / "e"
    disk_cache.write_entry(entry, KEY, DATA, write_payload())
    (entry / "entry.json").unlink()  # an incomplete folder, which a new write replaces
    real_remove = disk_cache.remove_entry

    def remove_then_other_writer_wins(path):
        real_remove(path)
        monkeypatch.setattr(disk_cache, "remove_entry", real_remove)
        disk_cache.write_entry(entry, KEY, DATA, write_payload(b"the winner's bytes"))

    monkeypatch.setattr(disk_cache, "remove_entry", remove_then_other_writer_wins)
    disk_cache.write_entry(entry, KEY, DATA, write_payload(b"the loser's bytes"))
    assert disk_cache.read_entry(entry, KEY, DATA, "toy", load_bytes) == b"the winner's bytes"
    assert hidden(tmp_path / "cache") == []


def test_new_entry_removes_its_origins_other_entries_only(tmp_path):
    root = tmp_path / "cache"
    old, other, new = root / "old", root / "other", root / "new"
    disk_cache.write_entry(old, {"v": 1}, DATA, write_payload(), origin="model-a")
    disk_cache.write_entry(other, {"v": 1}, DATA, write_payload(), origin="model-b")
    disk_cache.write_entry(root / "loose", {"v": 1}, DATA, write_payload())  # no origin: never removed
    disk_cache.write_entry(new, {"v": 2}, DATA, write_payload(), origin="model-a")
    assert sorted(p.name for p in root.iterdir()) == ["loose", "new", "other"]
