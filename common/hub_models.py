"""The GPT-2-family models ``--model`` loads by name, through the Hugging Face hub (or its cache).

These are the names TransformerLens (``loading_from_pretrained.OFFICIAL_MODEL_NAMES`` and
``MODEL_ALIASES``) knows for GPT-2 checkpoints that use the GPT-2 tokenizer: OpenAI's ``gpt2``
(TransformerLens' gpt2-small), ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``; Hugging Face's
``distilgpt2``; and Stanford CRFM's Mistral runs, GPT-2 small and medium each trained from five
seeds (x21, x49, x81, x343, x777). An official name is also its hub repository id, so its cache
entry is ``models--<id with "/" as "--">`` (e.g. ``models--stanford-crfm--alias-gpt2-small-x21``).
Names match case-insensitively, as in TransformerLens. A test checks this table against
TransformerLens' own, so it cannot drift silently.

No imports: output folders and ``--help`` need the names before TransformerLens is imported.
"""

from __future__ import annotations

GPT2_SMALL = "gpt2"  # the default model, TransformerLens' "gpt2-small"

# official name (= hub repo id) -> TransformerLens' aliases for it
ALIASES: dict[str, tuple[str, ...]] = {
    "gpt2": ("gpt2-small",),
    "gpt2-medium": (),
    "gpt2-large": (),
    "gpt2-xl": (),
    "distilgpt2": ("distillgpt2", "distill-gpt2", "distil-gpt2", "gpt2-xs"),
    "stanford-crfm/alias-gpt2-small-x21": (
        "stanford-gpt2-small-a", "alias-gpt2-small-x21", "gpt2-mistral-small-a", "gpt2-stanford-small-a"),
    "stanford-crfm/battlestar-gpt2-small-x49": (
        "stanford-gpt2-small-b", "battlestar-gpt2-small-x49", "gpt2-mistral-small-b"),
    "stanford-crfm/caprica-gpt2-small-x81": (
        "stanford-gpt2-small-c", "caprica-gpt2-small-x81", "gpt2-mistral-small-c", "gpt2-stanford-small-c"),
    "stanford-crfm/darkmatter-gpt2-small-x343": (
        "stanford-gpt2-small-d", "darkmatter-gpt2-small-x343", "gpt2-mistral-small-d"),
    "stanford-crfm/expanse-gpt2-small-x777": (
        "stanford-gpt2-small-e", "expanse-gpt2-small-x777", "gpt2-mistral-small-e"),
    "stanford-crfm/arwen-gpt2-medium-x21": (
        "stanford-gpt2-medium-a", "arwen-gpt2-medium-x21", "gpt2-medium-small-a", "gpt2-stanford-medium-a"),
    "stanford-crfm/beren-gpt2-medium-x49": (
        "stanford-gpt2-medium-b", "beren-gpt2-medium-x49", "gpt2-medium-small-b", "gpt2-stanford-medium-b"),
    "stanford-crfm/celebrimbor-gpt2-medium-x81": (
        "stanford-gpt2-medium-c", "celebrimbor-gpt2-medium-x81", "gpt2-medium-small-c"),
    "stanford-crfm/durin-gpt2-medium-x343": (
        "stanford-gpt2-medium-d", "durin-gpt2-medium-x343", "gpt2-medium-small-d", "gpt2-stanford-medium-d"),
    "stanford-crfm/eowyn-gpt2-medium-x777": (
        "stanford-gpt2-medium-e", "eowyn-gpt2-medium-x777", "gpt2-medium-small-e", "gpt2-stanford-medium-e"),
}
OFFICIAL = tuple(ALIASES)
_BY_LOWER = {a.lower(): name for name, aliases in ALIASES.items() for a in (name, *aliases)}


def official_name(name: str) -> str | None:
    """The official name (hub repo id) a ``--model`` value names, or None if it names none of these."""
    return _BY_LOWER.get(str(name).lower())


def is_gpt2_small(name: str) -> bool:
    return official_name(name) == GPT2_SMALL


def cache_entry(repo: str) -> str:
    """The Hugging Face cache folder name of a hub repository (``models--gpt2-medium``)."""
    return "models--" + repo.replace("/", "--")


def short_name(repo: str) -> str:
    """The repo id without its organisation (``alias-gpt2-small-x21``): folder names, labels."""
    return repo.split("/")[-1]
