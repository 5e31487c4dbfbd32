"""common.memory.release gives the heap's freed pages back to the OS (glibc only)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# 150 MB freed in 64 KB blocks (below glibc's mmap threshold, so they live in the heap), each
# followed by a 1 KB block that stays allocated (malloc'd, not pymalloc'd: over 512 bytes): the
# freed blocks sit between live ones, so glibc cannot shrink the heap and keeps them resident;
# the pattern of many long-lived small results among freed temporaries that release() is for.
PROGRAM = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from common.memory import release

    def anon_mb():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon"):
                return int(line.split()[1]) / 1024

    big, pins = [], []
    for _ in range(2400):
        big.append(bytearray(64 * 1024))
        pins.append(bytearray(1024))
    del big
    held = anon_mb()
    release()
    print(held, anon_mb(), sum(len(p) for p in pins))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RssAnon and malloc_trim: Linux/glibc")
def test_release_returns_freed_heap_pages():
    from common import memory

    if memory._malloc_trim() is None:
        pytest.skip("not glibc")
    out = subprocess.run([sys.executable, "-c", PROGRAM, str(ROOT)], capture_output=True, text=True, check=True)
    held, after, pinned = map(float, out.stdout.split())
    assert pinned == 2400 * 1024  # the small blocks are still there
    assert held - after > 100, (held, after)  # most of the 150 MB freed in between is returned


def test_release_without_glibc_still_collects_garbage(monkeypatch):
    """Elsewhere than glibc release() is gc.collect(): a reference cycle is gone afterwards."""
    import gc
    import weakref

    from common import memory

    class Node:
        pass

    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    gc.disable()
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a
        alive = weakref.ref(a)
        del a, b
        assert alive() is not None  # only the cycle collector can free it
        memory.release()
        assert alive() is None
    finally:
        gc.enable()
