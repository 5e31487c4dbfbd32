"""Claims: what the study asserts, how a saved result is judged, and what a status means.

Every analysis script declares its claims beside its code (``CLAIMS = [Claim(...)]``): a stable
id (also the report's anchor), the claim, its source, the published value, the figure and table
behind it, the criterion in words with its tolerance and the reason for that tolerance, and a
``check(out_dir)`` that reads the same saved files the script's ``render`` reads. A check returns
:class:`Evidence` with two independent judgements:

* ``published``: the published number (or direction) against our confidence interval, one of
  ``reproduced`` / ``differs`` / ``inconclusive`` (:func:`near`, :func:`at_least`, :func:`sign`,
  :func:`all_of`), or None when the claim has no published counterpart;
* ``holds``: the claim's *shape* on this model (who is lowest, which sign, which side of a
  threshold), used for planted models, whose ground truth says which claims are true.

The status shown for a run depends on what was loaded (:func:`status`):

* genuine gpt2-small (the genuine-weights verdict, :mod:`common.genuine_weights`): the
  ``published`` outcome; a claim whose protocol must match the published experiment's
  (``protocol_bound``) is judged on the ``--protocol post`` run saved under ``<root>/post/``, and
  without one (``protocol_matches`` False) it is ``inconclusive`` with a note, never ``reproduced``;
* a planted model (``planted`` or a twin ``planted:<twin>``): ``planted: holds`` /
  ``planted: fails`` from ``holds``; the planted numbers are never compared with gpt2-small's;
* any other model (gpt2-medium, a training seed, a checkpoint that is not gpt2-small): ``measured``,
  the number beside gpt2-small's published one, no verdict;
* ``shown``: a measurement with no published counterpart (or no shape to judge);
* ``not run``: no saved results (the first error line when run_all recorded one).

Interval conventions (one place): an interval is (lo, hi), a 95% CI where the analysis has one
and (x, x) for a quantity that is fixed by the weights (a spectrum, a count). Against a published
value v with tolerance t: ``reproduced`` when the whole interval lies in [v - t, v + t],
``differs`` when it lies wholly outside, ``inconclusive`` otherwise. A published direction
(a drop > 0): ``reproduced`` when the interval excludes 0 on the published side, ``differs`` when
it excludes 0 on the other side, ``inconclusive`` when it contains 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from common.planted_names import is_planted

REPRODUCED, DIFFERS, INCONCLUSIVE = "reproduced", "differs", "inconclusive"
HOLDS, FAILS = "planted: holds", "planted: fails"
MEASURED, SHOWN, NOT_RUN = "measured", "shown", "not run"
STATUSES = (REPRODUCED, DIFFERS, INCONCLUSIVE, HOLDS, FAILS, MEASURED, SHOWN, NOT_RUN)

POST = "the L1H5 post (gpt2-small's self-suppressing semantic head)"
ORIGINAL = "original repository (github.com/Mamiglia/deep-dive-L1H5)"
NEW = "new here"


@dataclass
class Evidence:
    """What a claim's saved results say on one model.

    ``text``: the measured value in words; ``numbers``: the measured numbers (a value, or
    ``{"value": x, "ci": [lo, hi]}``) for claims.json; ``published``: the outcome against the
    published value (None: no published counterpart); ``holds``: the claim's shape on this model
    (None: nothing to judge); ``protocol_matches``: False when the run's protocol is not the
    published experiment's (then a genuine run cannot reproduce it); ``note``: one line shown
    beside the value."""

    text: str
    numbers: dict = field(default_factory=dict)
    published: str | None = None
    holds: bool | None = None
    protocol_matches: bool = True
    note: str = ""


@dataclass(frozen=True)
class Claim:
    """One claim of the study, declared beside the analysis that checks it."""

    id: str
    script: str
    claim: str
    source: str
    published: str  # the published value in words ("none" when there is none)
    figure: str
    table: str
    criterion: str  # the criterion in words, with the tolerance and why
    check: Callable[[Path], Evidence]
    token_space: bool = False  # measured on effective embeddings: show their fidelity beside it
    # depends on the prompt protocol: judged on the ``--protocol post`` run under <root>/post/,
    # with our protocol's run shown beside it (common/protocol.py)
    protocol_bound: bool = False


# -- interval criteria ------------------------------------------------------------------------------

def interval(value: float, half_width: float | None = None) -> tuple[float, float]:
    """(lo, hi) of ``value`` +- ``half_width`` (a fixed quantity when half_width is None)."""
    h = 0.0 if half_width is None else float(half_width)
    return float(value) - h, float(value) + h


def near(ci: tuple[float, float], value: float, tol: float) -> str:
    """The published ``value`` (+- ``tol``) against the interval ``ci``."""
    lo, hi = ci
    if value - tol <= lo and hi <= value + tol:
        return REPRODUCED
    if hi < value - tol or lo > value + tol:
        return DIFFERS
    return INCONCLUSIVE


def at_least(ci: tuple[float, float], floor: float) -> str:
    """A published lower bound ("1.2 or more") against the interval ``ci``."""
    lo, hi = ci
    if lo >= floor:
        return REPRODUCED
    if hi < floor:
        return DIFFERS
    return INCONCLUSIVE


def at_most(ci: tuple[float, float], ceiling: float) -> str:
    """A published upper bound against the interval ``ci``."""
    lo, hi = ci
    if hi <= ceiling:
        return REPRODUCED
    if lo > ceiling:
        return DIFFERS
    return INCONCLUSIVE


def sign(ci: tuple[float, float], positive: bool) -> str:
    """A published direction (> 0 if ``positive``, else < 0) against the interval ``ci``."""
    lo, hi = ci
    if (lo > 0) if positive else (hi < 0):
        return REPRODUCED
    if (hi < 0) if positive else (lo > 0):
        return DIFFERS
    return INCONCLUSIVE


def banded(value: float, good: Callable[[float], bool], bad: Callable[[float], bool]) -> str:
    """A qualitative published claim on a fixed quantity: ``reproduced`` where ``good``,
    ``differs`` where ``bad``, ``inconclusive`` in the band between (the two must not overlap)."""
    if good(value):
        return REPRODUCED
    if bad(value):
        return DIFFERS
    return INCONCLUSIVE


def all_of(*outcomes: str) -> str:
    """Every part of a claim: ``differs`` if any part differs, ``reproduced`` if all are, else
    ``inconclusive``."""
    if DIFFERS in outcomes:
        return DIFFERS
    if outcomes and all(o == REPRODUCED for o in outcomes):
        return REPRODUCED
    return INCONCLUSIVE


def number(value: float, ci: tuple[float, float] | None = None) -> dict | float:
    """A measured number for claims.json: the value, with its interval when it has one."""
    return float(value) if ci is None else {"value": float(value), "ci": [float(ci[0]), float(ci[1])]}


# -- what was loaded decides the status -----------------------------------------------------------

def model_kind(meta: dict) -> str:
    """"genuine" (the weights are gpt2-small's), "planted" (``planted`` or ``planted:<twin>``) or
    "other", from a run's meta.json (its ``--model`` and its genuine-weights verdict)."""
    if is_planted(meta.get("args", {}).get("model")):
        return "planted"
    verdict = meta.get("weights", {}) if isinstance(meta.get("weights"), dict) else {}
    return "genuine" if verdict.get("status") == "genuine" else "other"


def status(evidence: Evidence | None, kind: str) -> str:
    """The status of one claim on a run of this ``kind`` (module docstring)."""
    if evidence is None:
        return NOT_RUN
    if kind == "planted":
        return SHOWN if evidence.holds is None else (HOLDS if evidence.holds else FAILS)
    if evidence.published is None:
        return SHOWN
    if kind == "genuine":
        return evidence.published if evidence.protocol_matches else INCONCLUSIVE
    return MEASURED


def target(out_dir: Path) -> tuple[int, int]:
    """(layer, head) a run studied, from its meta.json."""
    a = json.loads((Path(out_dir) / "meta.json").read_text()).get("args", {})
    return int(a.get("layer", 1)), int(a.get("head", 5))


def protocol(args: dict) -> str:
    """The prompt protocol of a run, from its meta.json ``args``: ``post`` (the original
    experiment's prompts) or ``ours`` (the default; a run from before the flag existed is ``ours``)."""
    return str(args.get("protocol", "ours"))


def markdown_table(claims: list[Claim]) -> str:
    """The README's claims table, generated from the claims themselves (one place for claim text)."""
    rows = ["| id | claim (source) | published | criterion | script | figure, table |",
            "| --- | --- | --- | --- | --- | --- |"]
    for c in claims:
        rows.append(f"| `{c.id}` | {c.claim} ({c.source}) | {c.published} | {c.criterion} | `{c.script}.py` | "
                    f"`{c.figure}`, `{c.table}` |")
    return "\n".join(rows)
