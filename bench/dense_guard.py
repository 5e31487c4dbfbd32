"""Run a script while watching every torch operation for a vocabulary x vocabulary sized result.

Usage: ``python bench/dense_guard.py REPORT.json SCRIPT.py [script args...]``

Why: peak RSS alone cannot rule out a dense 50257 x 50257 matrix of a small dtype (a boolean one is
2.5 GB, below the model-loading peak), and an allocated-but-untouched tensor does not show in RSS at
all. A ``TorchDispatchMode`` sees the outputs of every ATen operation (matmuls, comparisons,
reductions, factory functions), so it records the largest tensor the script ever produced, and
stops the script (exit 3) as soon as an output reaches a quarter of vocab x vocab elements
(6.3e8 elements: no legitimate streamed computation comes near it). Slower than a plain run (one
Python call per operation), so run_bench.py uses it on the planted model, which has the real GPT-2
vocabulary: every vocabulary-wide computation is the same size there as in gpt2-small.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
from pathlib import Path

VOCAB = 50257
LIMIT = VOCAB * VOCAB // 4


def main() -> None:
    report, script, *args = sys.argv[1:]
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    largest = {"numel": 0, "shape": None, "op": None, "dtype": None, "n_ops": 0}

    class Guard(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            largest["n_ops"] += 1
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.numel() > largest["numel"]:
                    largest.update(numel=t.numel(), shape=list(t.shape), op=str(func), dtype=str(t.dtype))
                    if t.numel() >= LIMIT:
                        write()
                        print(f"dense_guard: {func} produced {list(t.shape)} ({t.numel():.3g} elements >= "
                              f"vocab^2/4); stopping", file=sys.stderr, flush=True)
                        os._exit(3)
            return out

    def write():
        Path(report).write_text(json.dumps({"script": Path(script).name, "limit": LIMIT, **largest}) + "\n")

    atexit.register(write)
    guard = Guard()
    guard.__enter__()  # for the rest of the process (main thread)
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
