"""Which ``--model`` names mean the planted model, and which planted *twins* exist.

``planted`` is the offline demo model of :mod:`common.planted`, whose L1H5 follows the three rules
by construction. ``planted:<twin>`` is the same construction with one switch flipped so that named
claims are *false by construction*: a verdict that still calls them true is wrong, so the twins test
the verdicts, as the plain model tests the analyses (issue 22). Each twin declares its false claims
(the stable claim ids of the report) here and in its ground truth (``ground_truth.json``:
``"twin"``, ``"false_claims"``).

This module imports nothing of the repository, so the output-folder code, the command line and the
genuine-weights verdict can read a model name without building or loading anything; an unknown twin
stops the run with one line naming the twins that exist (:func:`check_model_name`), before any
output folder is made.
"""

from __future__ import annotations

from dataclasses import dataclass

PLANTED = "planted"


@dataclass(frozen=True)
class Twin:
    """A planted twin: what its construction changes, and which claims that makes false."""

    summary: str
    false_claims: tuple[str, ...]


# The report's stable claim ids (issue 22), each decided by one script (or a measurement).
CLAIM_IDS = ("head-survey", "component-ablation", "position-independence", "spectrum", "skew-downstream",
             "self-rank", "sym-reproduces", "eigen-steering", "cosine-peak", "clustering", "gradient-steering",
             "naive-similarity", "rank-grid", "rules-explained", "succession", "reader")

# Claim ids are the report's stable ids. A claim is listed when the construction makes it false
# (reasoned from the switch, then confirmed by the deciding script; see tests/test_twins.py).
TWINS: dict[str, Twin] = {
    "copying": Twin(
        "the identity-code term of L1H5 flipped: self and earlier copies attract (+w_U^2) instead of repel",
        # self (38 logits) outweighs the category (12) and BOS (7): ablating MLP0 changes nothing
        # (component-ablation); BOS gets no mass, so removing the skew (BOS) term cannot help
        # (skew-downstream); self-attention is on from the start, so no edit "turns it back on"
        # (eigen-steering, gradient-steering); nearly all mass is on self, so the attention graph
        # has no category edges (clustering) and the head is the naive similarity head it was
        # said to differ from (naive-similarity); the rules' pattern is not the head's
        # (rules-explained)
        ("head-survey", "component-ablation", "skew-downstream", "self-rank", "eigen-steering", "cosine-peak",
         "clustering", "gradient-steering", "naive-similarity", "rules-explained"),
    ),
    "positional": Twin(
        "L1H5 also reads the positional embedding: a key-position logit (std LOGIT_POSITIONAL over the "
        "prompt positions) in its QK circuit, strong enough that removing the positions changes its score by more "
        "than a tenth of what removing the token embedding does",
        ("position-independence", "component-ablation"),
    ),
    "skew": Twin(
        "L1H5's identity-code block gains a large skew part (word i -> word j attracts, j -> i repels, a "
        "different coefficient for every pair), so the symmetric part no longer reproduces the scores",
        # the skew attraction (up to LOGIT_SKEW) outweighs self's identity margin (4 logits) once
        # the negative eigenvalues are removed, so self does not become the top key (eigen-steering)
        ("sym-reproduces", "eigen-steering"),
    ),
    "no-mlp0": Twin(
        "L1H5's category term reads the token embedding's category key K instead of MLP0's output C",
        ("component-ablation",),
    ),
}


def is_planted(model) -> bool:
    """True for ``planted`` and every ``planted:<name>`` (known twin or not: see :func:`planted_twin`)."""
    return isinstance(model, str) and (model == PLANTED or model.startswith(PLANTED + ":"))


def planted_twin(model: str) -> str | None:
    """The twin a planted model name asks for (None for the plain ``planted``); SystemExit with one
    line naming the existing twins for an unknown one."""
    if model == PLANTED:
        return None
    name = model.removeprefix(PLANTED + ":")
    if name not in TWINS:
        raise SystemExit(f"error: unknown planted twin {name!r} in --model {model}: the twins are "
                         f"{', '.join('planted:' + t for t in TWINS)} (or plain 'planted')")
    return name


def check_model_name(model) -> None:
    """SystemExit for ``planted:<unknown>`` (every other name passes: the loader judges it)."""
    for m in model if isinstance(model, (list, tuple)) else [model]:
        if is_planted(m):
            planted_twin(m)


def planted_label(model: str) -> str:
    """``planted`` or ``planted:<twin>``, as shown in verdicts and page titles."""
    twin = planted_twin(model)
    return PLANTED if twin is None else f"{PLANTED}:{twin}"
