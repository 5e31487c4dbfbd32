"""Give freed heap memory back to the operating system (glibc's ``malloc_trim``).

Why: peak RSS is a target of this repository (1.5 GB per script at gpt2-small size). Python
objects and small tensors live on glibc's heaps; when a phase that made many of them ends (e.g.
tokenising a text into an id array), glibc keeps the freed pages for reuse, and with several
threads it keeps them per thread arena, so the process's RSS stays as high as if they were still
in use, and the next phase's memory comes on top. ``malloc_trim(0)`` returns every free page of
every arena. It changes no value, only where free memory sits; on systems without glibc it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_TRIM = None  # libc's malloc_trim, or False where there is none


def release_free_memory() -> bool:
    """Return the heaps' free pages to the OS; True if it could (glibc), else False."""
    global _TRIM
    if _TRIM is None:
        _TRIM = False
        if sys.platform.startswith("linux"):
            try:
                _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
                _TRIM.argtypes, _TRIM.restype = [ctypes.c_size_t], ctypes.c_int
            except (OSError, AttributeError):
                _TRIM = False
    if not _TRIM:
        return False
    _TRIM(0)
    return True
