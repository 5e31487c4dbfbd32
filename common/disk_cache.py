"""The on-disk cache-entry protocol shared by every cache of this repository (processed weights:
:mod:`common.weights_cache`; effective embeddings: :mod:`common.effective_embeddings`; token ids
of local text: :mod:`common.text_ids_cache`).

Conventions (stated once here; each cache says only what its key holds and how its data loads):

* **An entry is a folder** holding one data file (the cache names it) and ``entry.json``: the key,
  the data file's size, sha256 and verified stat signature, the creation time and the cache's own
  fields. A folder is the unit because the data file may be memory-mapped (processed weights, text
  ids): the entry is replaced by renaming a whole new folder into place, never by rewriting a file
  a reader has mapped.
* **The key** is a JSON-able dict of everything the data depends on; :func:`digest` (sha256 of its
  sorted JSON, 24 hex characters) names the folder where the cache has no more readable name.
  The key is stored in the entry and compared in full on every read, so a digest collision or a
  renamed folder can never serve the wrong data.
* **Reading** (:func:`read_entry`): no ``entry.json`` means no entry (None: build it). Otherwise the
  entry is used only if entry.json parses, holds exactly the wanted key, and the data file has the
  recorded size and sha256; the hash is recomputed only when the file's stat signature (size,
  mtime, ctime, inode, device) differs from the last verified one, so a rewrite, truncation or
  copy is caught and an untouched entry costs a stat. An entry that fails any check, or whose data
  does not load (:class:`InvalidEntry`, or any error of a damaged file), is removed with a one-line
  note and read as absent: a cache is never trusted over recomputing.
* **Writing** (:func:`write_entry`) is atomic: the entry is written into a hidden temporary folder
  beside it and renamed into place, so an interrupted write (crash, full disk, failing writer)
  leaves at most a hidden folder that is never read as an entry. If another process put its
  complete entry there first, that one is kept (both computed the same data from the same key).
  Small text files (``entry.json`` updates, a cache's own memo) go through
  :func:`common.outputs.atomic_path`.
* **An unwritable cache folder** (read-only, full, not a folder) never stops a run: the caller
  computes without the cache and :func:`note_unwritable` says so in one line on stderr, once per
  process and folder. A cache folder that can be read but not written still serves its entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

from common.errors import error_summary
from common.outputs import UMASK, atomic_path

ENTRY = "entry.json"
NOTED: set[str] = set()  # the notes already printed by this process (a note is said once)

T = TypeVar("T")


class InvalidEntry(Exception):
    """A cache entry that must not be used (corrupt, stale or incomplete): the message says which."""


def digest(key: dict) -> str:
    """sha256 (24 hex) of ``key`` as sorted JSON: the same for equal keys, whatever their order."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def stat_signature(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def write_cache_text(path: Path, text: str) -> None:
    """``text`` into ``path`` atomically (:func:`common.outputs.atomic_path`; not an output of a run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, record=False) as tmp:
        tmp.write_text(text)


def read_entry(entry: Path, key: dict, data_file: str, label: str, load: Callable[[Path, dict], T]) -> T | None:
    """``load(data path, entry.json fields)`` of the valid entry ``entry`` for ``key``, or None: the
    entry is absent, or invalid, which is then removed with the note "<label> cache entry ... is
    ...; rebuilding it" (module docstring). ``load`` raises :class:`InvalidEntry` for data that
    loads but is not what entry.json says."""
    if not (entry / ENTRY).exists():
        return None
    try:
        return load(entry / data_file, checked_meta(entry, key, data_file))
    except InvalidEntry as exc:
        note(f"{label} cache entry {entry} is {exc}; rebuilding it", once=False)
    except Exception as exc:  # torch.load / np.load / load_state_dict on a damaged file: many types
        note(f"{label} cache entry {entry} is unreadable ({error_summary(exc)}); rebuilding it", once=False)
    remove_entry(entry)
    return None


def checked_meta(entry: Path, key: dict, data_file: str) -> dict:
    """The entry.json fields of an entry that holds ``key`` and an intact ``data_file``, else
    :class:`InvalidEntry` (module docstring); a newly verified stat signature is recorded when
    the entry is writable."""
    try:
        meta = json.loads((entry / ENTRY).read_text())
    except ValueError:
        raise InvalidEntry(f"corrupt ({ENTRY} does not parse)") from None
    if not isinstance(meta, dict) or meta.get("key") != key:
        raise InvalidEntry("stale (its key differs from the wanted one)")
    path = entry / data_file
    if not path.exists():
        raise InvalidEntry(f"incomplete ({data_file} missing)")
    sig = stat_signature(path)
    if sig[0] != meta.get("bytes"):
        raise InvalidEntry(f"corrupt ({data_file} has {sig[0]} bytes, {meta.get('bytes')} were written)")
    if sig != meta.get("verified_sig"):
        if sha256_file(path) != meta.get("sha256"):
            raise InvalidEntry(f"corrupt ({data_file} checksum mismatch)")
        meta["verified_sig"] = sig
        try:
            write_cache_text(entry / ENTRY, json.dumps(meta, indent=1))
        except OSError:
            pass  # a read-only cache: verified again next time
    return meta


def write_entry(entry: Path, key: dict, data_file: str, write: Callable[[Path], dict | None],
                origin=None) -> None:
    """Write a new entry for ``key`` atomically (module docstring).

    ``write(path)`` writes the data file at ``path`` (inside the temporary folder) and returns the
    cache's own entry.json fields (a dict, or None for none). A folder already at ``entry`` (an
    invalid or incomplete one: a valid entry would have been read) is replaced. ``origin``
    (JSON-able, optional) names what the entry is of (a model folder, a set of text files):
    entries of the same origin under another key are stale and removed afterwards. Raises what the
    writer or the file system raised (OSError for an unwritable folder), leaving nothing behind.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes 0700 folders; an entry is as readable as any file
        data = tmp / data_file
        meta = {"key": key, "origin": origin, **(write(data) or {})}
        meta |= {"bytes": data.stat().st_size, "sha256": sha256_file(data), "verified_sig": stat_signature(data),
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / ENTRY).write_text(json.dumps(meta, indent=1))
        if entry.exists():
            remove_entry(entry)
        try:
            tmp.rename(entry)
        except OSError:
            if not (entry / ENTRY).exists():
                raise  # not "another process won the race"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if origin is not None:
        _remove_others(entry, origin)


def _remove_others(entry: Path, origin) -> None:
    """Entries of the same origin under another key are stale: drop them (disk space). Hidden
    folders are other writers' entries in the making (or being removed): left alone."""
    for other in entry.parent.iterdir():
        if other == entry or other.name.startswith(".") or not (other / ENTRY).is_file():
            continue
        try:
            if json.loads((other / ENTRY).read_text()).get("origin") == origin:
                remove_entry(other)
        except (OSError, ValueError, AttributeError):
            continue


def remove_entry(entry: Path) -> None:
    """Rename aside, then delete (a reader that already mapped the data file keeps its pages)."""
    try:
        aside = entry.with_name(f".{entry.name}.old-{os.getpid()}")
        entry.rename(aside)
    except OSError:
        aside = entry
    shutil.rmtree(aside, ignore_errors=True)


def note_unwritable(label: str, folder: Path, exc: BaseException) -> None:
    """The one line for a cache folder that cannot be written (module docstring)."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else error_summary(exc)
    note(f"cannot write the {label} cache in {folder} ({reason}); "
         "continuing without it (set L1H5_CACHE to a writable folder)")


def note(message: str, once: bool = True) -> None:
    """``note: <message>`` on stderr; with ``once``, only the first time in this process."""
    if once and message in NOTED:
        return
    NOTED.add(message)
    print(f"note: {message}", file=sys.stderr, flush=True)
