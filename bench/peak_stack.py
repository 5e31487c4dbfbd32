"""Where does a script's memory peak? Run it while sampling RSS and the main thread's Python stack.

Usage: ``python bench/peak_stack.py REPORT.json SCRIPT.py [script args...]``

A thread samples the process's resident set size every ``PEAK_STACK_EVERY`` seconds (default
0.02) and, whenever it reaches a new maximum, records the main thread's Python stack (the frames of
this repository's code, innermost last). The report holds the peak RSS, the stack at the peak and
the RSS reached at each distinct repository frame, so a peak can be attributed to the function
that allocated it (e.g. a vocabulary-sized batch in a forward pass) rather than to "the script".
Sampling misses allocations shorter than the interval; ``ru_maxrss`` (also reported) does not.
"""

from __future__ import annotations

import json
import os
import resource
import runpy
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def repo_stack(frame) -> list[str]:
    out = []
    while frame is not None:
        f = Path(frame.f_code.co_filename)
        if frame.f_code.co_filename.startswith("<"):  # <frozen runpy> and the like
            frame = frame.f_back
            continue
        try:
            rel = f.resolve().relative_to(ROOT)
            if not str(rel).startswith("bench/"):
                out.append(f"{rel}:{frame.f_lineno} {frame.f_code.co_name}")
        except ValueError:
            pass
        frame = frame.f_back
    return out[::-1]


def main() -> None:
    report, script, *args = sys.argv[1:]
    every = float(os.environ.get("PEAK_STACK_EVERY", "0.02"))
    main_id = threading.main_thread().ident
    state = {"peak": 0, "stack": [], "by_frame": {}, "samples": 0}
    halt = threading.Event()

    def sample():
        while not halt.wait(every):
            r = rss()
            state["samples"] += 1
            frame = sys._current_frames().get(main_id)
            stack = repo_stack(frame) if frame is not None else []
            if stack:
                key = stack[-1]
                state["by_frame"][key] = max(state["by_frame"].get(key, 0), r)
            if r > state["peak"]:
                state["peak"], state["stack"] = r, stack

    def write():
        halt.set()
        top = sorted(state["by_frame"].items(), key=lambda kv: -kv[1])[:15]
        Path(report).write_text(json.dumps({
            "script": Path(script).name, "peak_rss_sampled": state["peak"], "stack_at_peak": state["stack"],
            "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "samples": state["samples"],
            "highest_frames": [{"frame": k, "rss": v} for k, v in top]}, indent=1) + "\n")

    threading.Thread(target=sample, daemon=True).start()
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).resolve().parent))
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        time.sleep(2 * every)
        write()


if __name__ == "__main__":
    main()
