"""The two prompt protocols: ``post`` (the published experiment, exactly) and ``ours`` (robust).

A published number can only be compared with a number measured the same way. ``post`` is the
original repository's experiment (github.com/Mamiglia/deep-dive-L1H5, commit
``6c45e47dbb0dc63b5a62ba7eb5bec3d152a6bdb8``; facts read from its files, no code taken):

* word lists: ``src/constants.py`` ``KEYWORDS``, 8 categories of 5-6 words (:data:`POST_KEYWORDS`);
* prompts: ``src/prompt.py`` ``build_prompt``: every word drawn by first drawing a category, then a
  word of it, uniformly and with replacement (so copies occur as they happen to), after BOS;
* head survey (``characterize_head.py``): one prompt of 255 words (256 tokens with BOS);
* component ablation (``component_ablation.py``): 128 prompts of 63 words (64 tokens), each
  component mean-ablated at every position, BOS included, with the mean over (prompt, position)
  of the same 128 prompts;
* score (``src/metrics.py`` ``explained_attn_score``): -log of the mass on the allowed keys,
  clamped at 1e-12, averaged over every query row *including* BOS's (whose only allowed key is
  itself, so it costs 0 and dilutes the mean by 1/256).

Our single departure under ``post``: the survey draws ``--n-prompts`` (default 16) such prompts,
each scored exactly as above, so the score gets a confidence interval; the post's one prompt is one
draw from the same distribution (``--n-prompts 1`` is its exact count, with no CI).

``ours`` is the default: 14 categories of 12 words (``common.prompts.CATEGORIES``), many seeded
prompts with some words repeated on purpose, separate reference prompts for the ablation values,
BOS never ablated, the clamp at 1e-6 (one missed query costs 13.8, not 27.6) and the BOS row left
out of the mean. Both are seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.prompts import CATEGORIES

POST_SOURCE = "github.com/Mamiglia/deep-dive-L1H5 @ 6c45e47dbb0dc63b5a62ba7eb5bec3d152a6bdb8"

# src/constants.py, KEYWORDS (the prompts prepend a space to every word).
POST_KEYWORDS: dict[str, list[str]] = {
    "colors": ["blue", "red", "green", "yellow", "purple"],
    "animals": ["dog", "cat", "mouse", "horse", "sheep"],
    "fruits": ["apple", "banana", "grape", "peach", "lemon"],
    "emotions": ["happy", "sad", "angry", "scared", "proud"],
    "weather": ["rain", "snow", "wind", "storm", "sun"],
    "days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"],
    "years": ["1989", "1999", "1972", "1963", "1978"],
    "numbers": ["24", "69", "42", "22", "32", "50"],
}


@dataclass(frozen=True)
class Protocol:
    """How prompts are built and scored; the scripts' size flags default to these values."""

    name: str
    categories: dict[str, list[str]]
    survey_words: int  # words per survey prompt (BOS not counted)
    survey_prompts: int
    ablation_words: int
    ablation_prompts: int
    repeat_prob: float  # extra chance a word repeats an earlier one (copies on purpose)
    eps: float  # clamp of the attended mass before -log
    bos_row: bool  # BOS's own row (cost 0) counts in the mean
    ablate_bos: bool  # mean ablation also replaces position 0
    reference_is_batch: bool  # ablation values from the scored prompts themselves


POST = Protocol("post", POST_KEYWORDS, 255, 16, 63, 128, 0.0, 1e-12, True, True, True)
OURS = Protocol("ours", CATEGORIES, 48, 64, 20, 256, 0.1, 1e-6, False, False, False)
PROTOCOLS = {p.name: p for p in (POST, OURS)}
