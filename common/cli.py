"""The flags every script shares and the start-up every script does (checks before any work)."""

from __future__ import annotations

import argparse
import functools
import os
import random
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from common.outputs import claim_out_dir, prepare_out_dir


MODEL_HELP = ("'gpt2-small' (HF cache/hub), another GPT-2-family name (gpt2-medium, gpt2-large, gpt2-xl, "
              "distilgpt2, stanford-crfm/alias-gpt2-small-x21, ...), 'planted' (offline demo model), "
              "'planted:<twin>' (a twin whose named claims are false: common/planted_names.py) or a local "
              "HF GPT-2 folder")


def base_parser(doc: str | None, head: bool = True, several_models: bool = False) -> argparse.ArgumentParser:
    """argparse with --model --device --seed --out (and --layer --head unless head=False);
    ``several_models``: --model takes one or more names (a list)."""
    p = argparse.ArgumentParser(
        description=(doc or "").strip().split("\n\n")[0],
        epilog="Module docstring: question, method and outputs of this analysis.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,  # one spelling per flag: no silent prefixes of renamed flags
    )
    p.add_argument("--model", default=["gpt2-small"] if several_models else "gpt2-small",
                   nargs="+" if several_models else None, help=MODEL_HELP + (" (one or more)" if several_models else ""))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    if head:
        p.add_argument("--layer", type=int, default=1, help="layer of the head to study")
        p.add_argument("--head", type=int, default=5, help="head index within the layer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0 = torch default; 1 is fastest on a busy machine)")
    p.add_argument("--out", default=None, help="output folder (default figures/<script>/; figures/demo/<script>/ for planted, "
                   "figures/models/<name>/<script>/ for another GPT-2-family model)")
    return p


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global stream and torch: call it inside :func:`script_state`
    (as :func:`start` is), which gives the caller's streams back afterwards."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def script_state() -> Iterator[None]:
    """Give back on exit, also on an error or SystemExit, the global state a run changes: torch's
    grad mode and intra-op thread count, and the random streams (python ``random``, numpy's global
    stream, torch's CPU generator and, where CUDA is initialised, its generators).

    :func:`start` disables grad, sets ``--threads`` and seeds every stream for the run; every
    script's ``main`` runs inside this context (:func:`keeps_state`), so calling it from a notebook
    or a test leaves the caller's session as it was.
    """
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_grad_enabled(grad)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)


def keeps_state(main: Callable) -> Callable:
    """Decorator for a script's ``main``: the whole run inside :func:`script_state`."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        with script_state():
            return main(*args, **kwargs)

    wrapper.keeps_state = True
    return wrapper


def check_head(model, layer: int, head: int) -> None:
    """SystemExit naming the valid range when (layer, head) does not exist in ``model``."""
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    if not 0 <= layer < n_l:
        raise SystemExit(f"error: --layer {layer} out of range: this model has layers 0..{n_l - 1}")
    if not 0 <= head < n_h:
        raise SystemExit(f"error: --head {head} out of range: this model has heads 0..{n_h - 1} per layer")


def start(args: argparse.Namespace, script: str):
    """Common start-up: output folder checked first, then seed, model, head range.

    Disables grad, sets ``--threads`` and seeds every random stream: global state, which the
    caller gets back by running inside :func:`script_state` (every script's ``main`` does).
    Returns (model, out_dir). Exits with a short message (no traceback) when the model cannot be
    loaded.
    """
    torch.set_grad_enabled(False)
    if getattr(args, "threads", 0) < 0:
        raise SystemExit("error: --threads must be >= 0")
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    out_dir = prepare_out_dir(args.out, script, args.model)  # checked now, created once start-up succeeded
    # transformer_lens takes seconds to import: not for --help, nor before the output folder is checked
    from common.model import ModelUnavailable, load_model
    seed_everything(args.seed)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_libraries()
    warm_weights_verdict(args.model)
    try:
        model = load_model(args.model, args.device)
    except ModelUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if hasattr(args, "layer"):
        check_head(model, args.layer, args.head)
    claim_out_dir(out_dir, args)
    return model, out_dir


def warm_weights_verdict(model_name) -> None:
    """Hash the checkpoint for the genuine-weights verdict (:mod:`common.genuine_weights`) now,
    before the model is in memory: the verdict is cached on disk and meta.json reads it back after
    the analysis, so the hashing's file buffers (about 0.3 GB at gpt2-small size on a cold cache)
    never stack on the model and the analysis' own memory."""
    if isinstance(model_name, str):
        from common.genuine_weights import weights_verdict

        weights_verdict(model_name)


@dataclass
class HeadStart:
    """What the QK scripts start from: the model, the output folder, the studied head's QK circuit
    (:class:`common.head_qk.FactoredQK`) and the effective embeddings its layer sees."""

    model: object
    out_dir: Path
    qk: object
    E: torch.Tensor


def start_head(args: argparse.Namespace, script: str) -> HeadStart:
    """:func:`start`, then the head's factored QK circuit and the effective embeddings of its layer
    (cached on disk, see :mod:`common.effective_embeddings`): the one start-up of the QK scripts.

    Writes ``effective_embeddings.json`` into the output folder: how the effective embeddings were
    made (positions averaged, prompt mix) and how faithful they are to the head's true inputs on
    held-out prompts (cosine, score correlation and error), so every result that uses them says so.
    """
    from common.effective_embeddings import effective_embeddings, effective_record
    from common.head_qk import FactoredQK
    from common.outputs import write_json

    model, out_dir = start(args, script)
    qk = FactoredQK.from_model(model, args.layer, args.head)
    E = effective_embeddings(model, args.layer)
    write_json(out_dir / "effective_embeddings.json", effective_record(model, args.layer, args.head, E=E))
    return HeadStart(model, out_dir, qk, E)


def add_protocol_flag(p: argparse.ArgumentParser) -> None:
    """``--protocol {post,ours}``: the one spelling of "build and score prompts as the published
    experiment did, or our way" (:mod:`common.protocol`); size flags left unset take the protocol's
    values (:func:`apply_protocol`). run_all.py passes its own ``--protocol`` to every script that
    declares it this way."""
    p.add_argument("--protocol", default="ours", choices=["post", "ours"],
                   help="'post': the original repository's word lists, prompt lengths and counts, score and "
                        "ablation (compare with the published numbers); 'ours': seeded, many prompts, CIs, BOS kept")


def apply_protocol(args: argparse.Namespace, **fields: str) -> argparse.Namespace:
    """Fill every flag left at None from the chosen protocol: ``fields`` maps a flag's dest to a
    :class:`common.protocol.Protocol` field (e.g. ``n_prompts="survey_prompts"``)."""
    from common.protocol import PROTOCOLS

    proto = PROTOCOLS[args.protocol]
    for dest, field_name in fields.items():
        if getattr(args, dest) is None:
            setattr(args, dest, getattr(proto, field_name))
    return args


def add_biases_flag(p: argparse.ArgumentParser, default: bool, what: str = "scores") -> None:
    """``--biases`` / ``--no-biases``: the one spelling of "include the b_Q/b_K cross-terms"."""
    p.add_argument("--biases", action=argparse.BooleanOptionalAction, default=default,
                   help=f"include the b_Q/b_K cross-terms in the {what} (the model's real attention logits)")


def add_text_flag(p: argparse.ArgumentParser, use: str, default: str, demo: bool = True) -> None:
    """``--text PATH``: the one spelling of "natural text from local files instead of the network"
    (run_all.py passes its own ``--text`` to every script that declares it this way)."""
    alternatives = "a text file or a folder of .txt files" + (", or 'demo' (the generated demo corpus)" if demo else "")
    p.add_argument("--text", default=None, metavar="PATH", help=f"text to {use}: {alternatives}; without --text: {default}")


def script_name(file: str) -> str:
    return Path(file).stem


def _quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
