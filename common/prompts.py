"""Semantic categories, the ideal L1H5 attention mask, and seeded prompt builders.

Category names follow the published work: animals, colours, days, months, numbers, names, verbs
and logical operators from the L1H5 post; fruits, emotions, weather, years, pronouns, countries
and the 30 "group tokens" (6 weekdays, 6 colours, 6 years, 6 pronouns, 6 countries) from the
original repository. The lists hold every word of the original's lists and group tokens (cited
below) plus our own choices. Every word is a single GPT-2 token *with its leading space*;
:func:`category_token_ids` enforces that.

The ideal mask M (rules 1-3 of the README): query q may attend to key k < q iff both are in the
same category and are different tokens; a query with no such key should attend to BOS (k = 0).

Prompts built here use exactly those spaced tokens. Natural text spells the same words other ways
("Monday" at a line start, " He" starting a sentence, " john"): :func:`category_variant_ids` adds
every single-token spelling (:func:`word_forms`), which is what the natural-text category map
(``common.head_replacement.categories_from_lists``) uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Every word of the original repository's word lists (its src/constants.py KEYWORDS, the post's
# prompts: common/protocol.py) and its 30 group tokens is in these lists, so the planted model
# plants every word either protocol uses; each category lists the group tokens first, in the
# original's order (the planted identity code of a word is its index here). Near-duplicate
# spellings share a category (" You" / " you", " He" / " he", " Blue" / " blue", " White" /
# " white"), as they do for gpt2-small's L1H5. The other words are our own choices.
CATEGORIES: dict[str, list[str]] = {
    "animals": "cat dog horse cow pig sheep lion tiger bear mouse fox rabbit".split(),
    "colours": "red blue Blue green silver White yellow purple black white pink brown".split(),
    "days": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split(),
    "months": "January February March April May June July August September October November December".split(),
    "numbers": "one two three four five six 24 69 42 22 32 50".split(),
    "names": "John Mary James David Michael Sarah Paul Peter Anna Emma Tom Jack".split(),
    "verbs": "run walk eat jump swim read write sing think speak drive sleep".split(),
    "logical": "and or not if then but nor else unless either neither only".split(),
    "fruits": "apple banana grape lemon cherry peach pear mango plum lime coconut pineapple".split(),
    "emotions": "happy sad angry scared proud calm excited nervous anxious jealous lonely bored".split(),
    "weather": "rain snow wind storm sun cloud fog thunder hail frost ice heat".split(),
    "years": "1918 1920 1930 1943 1998 2000 1989 1999 1972 1963 1978 1990".split(),
    "pronouns": "You He his she her their he they we you it him".split(),
    "countries": "Italy Iceland Austria Mexico Spain France Germany China Japan Russia India Canada".split(),
}

# The original repository's 30 group tokens, in its order (src/constants.py GROUP_TOKENS,
# github.com/Mamiglia/deep-dive-L1H5 @ 6c45e47dbb0dc63b5a62ba7eb5bec3d152a6bdb8): used by every
# group heatmap, so they are drawn on the post's tokens. Group names are ours.
GROUP_TOKENS: dict[str, list[str]] = {
    "days": "Monday Tuesday Wednesday Thursday Friday Saturday".split(),
    "colours": "red blue Blue green silver White".split(),
    "years": "1918 1920 1930 1943 1998 2000".split(),
    "pronouns": "You He his she her their".split(),
    "countries": "Italy Iceland Austria Mexico Spain France".split(),
}


class TokenizationError(ValueError):
    """A category word is not exactly one GPT-2 token."""


def single_token_id(tokenizer, word: str) -> int:
    """The id of ``" " + word``; a clear error naming the pieces when it is not one token."""
    text = word if word.startswith(" ") else " " + word
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise TokenizationError(f"category word {text!r} is {len(ids)} GPT-2 tokens {pieces}, not one")
    return ids[0]


def category_token_ids(tokenizer, categories: dict[str, list[str]] = CATEGORIES) -> dict[str, list[int]]:
    """Token ids per category; raises if a word is not one token or appears in two categories."""
    out: dict[str, list[int]] = {}
    seen: dict[int, str] = {}
    for name, words in categories.items():
        ids = [single_token_id(tokenizer, w) for w in words]
        for w, i in zip(words, ids):
            if i in seen:
                raise ValueError(f"word {w!r} is in both {seen[i]!r} and {name!r}")
            seen[i] = name
        out[name] = ids
    return out


# Lower-case forms of listed capitalised words that, in running text, are mostly a different word:
# " may" (the modal verb, not the month), " march" (the verb or noun), " i"/"i" (a numeral or a list
# marker "(i)" far more often than the pronoun). They are left out of the natural-text variants.
LOWERCASE_HOMOGRAPHS = frozenset({"may", "march", "i"})


def word_forms(word: str) -> list[str]:
    """The spellings of a category word in running text, the listed spaced form first.

    Case: as listed, capitalised (sentence starts: " He", " Red") and lower-case (" john"),
    except :data:`LOWERCASE_HOMOGRAPHS`. Spacing: with the leading space (mid-sentence) and
    without it (at a line start, after a bracket or quote: "(Monday", "\\nMonday"). Which of
    these are single GPT-2 tokens is for :func:`category_variant_ids` to check: many are not
    (" monday" is " m" + "onday", "Sheep" is two tokens), and those cannot be a category token.
    """
    word = word.strip()
    cases = [word, word[0].upper() + word[1:]]
    if word.lower() == word or word.lower() not in LOWERCASE_HOMOGRAPHS:
        cases.append(word.lower())
    cases = list(dict.fromkeys(cases))
    return [" " + c for c in cases] + cases


def category_variant_ids(tokenizer, categories: dict[str, list[str]] = CATEGORIES) -> dict[str, list[int]]:
    """Token ids per category for natural text: every :func:`word_forms` spelling of every word
    that is a single GPT-2 token, the listed spaced tokens (:func:`category_token_ids`) first.

    A spelling claimed by two categories is in neither (the listed spaced tokens must be unique,
    as :func:`category_token_ids` checks). Whether a token is a whole word where it occurs (not a
    piece such as "Red" in "Redistribution") depends on its neighbours and is decided on the
    text (``common.natural_text.WordBoundaries``).
    """
    listed = category_token_ids(tokenizer, categories)
    canonical = {t for ids in listed.values() for t in ids}
    found: dict[str, list[int]] = {}
    for name, words in categories.items():
        ids = (tokenizer.encode(f, add_special_tokens=False) for w in words for f in word_forms(w))
        found[name] = list(dict.fromkeys(i[0] for i in ids if len(i) == 1 and i[0] not in canonical))
    owners: dict[int, int] = {}
    for ids in found.values():
        for t in ids:
            owners[t] = owners.get(t, 0) + 1
    return {name: listed[name] + [t for t in found[name] if owners[t] == 1] for name in categories}


def group_token_ids(tokenizer) -> tuple[list[int], list[str], list[str]]:
    """(ids, labels, group of each) of the 30 group tokens, in heatmap order."""
    ids, labels, groups = [], [], []
    for g, words in GROUP_TOKENS.items():
        for w in words:
            ids.append(single_token_id(tokenizer, w))
            labels.append(w)
            groups.append(g)
    return ids, labels, groups


def token_category_map(tokenizer, categories: dict[str, list[str]] = CATEGORIES) -> dict[int, int]:
    """token id -> category index (the order of ``categories``)."""
    return {t: c for c, ids in enumerate(category_token_ids(tokenizer, categories).values()) for t in ids}


def ideal_mask(tokens: torch.Tensor, cat_of: dict[int, int]) -> torch.Tensor:
    """The ideal L1H5 pattern support M[..., q, k] for ``tokens`` [batch, pos] (BOS at position 0).

    M[q, k] = 1 iff k < q, token k is not token q, and both are in the same category; rows with
    no such key put their single allowed key on BOS. Row 0 (BOS itself) is BOS.
    """
    tokens = tokens if tokens.dim() == 2 else tokens[None]
    cats = torch.tensor(
        [[cat_of.get(int(t), -1) for t in row] for row in tokens.tolist()], device=tokens.device
    )
    return mask_from_categories(tokens, cats)


def mask_from_categories(tokens: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
    """:func:`ideal_mask` given the category of every position, ``cats`` [batch, pos] (-1: none)."""
    n = tokens.shape[1]
    earlier = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)
    same_cat = (cats[:, :, None] == cats[:, None, :]) & (cats[:, :, None] >= 0)
    diff_tok = tokens[:, :, None] != tokens[:, None, :]
    mask = same_cat & diff_tok & earlier
    mask[:, 0, :] = False  # BOS never counts as a category member, even if its id were listed
    mask[:, :, 0] = False
    mask[:, :, 0] = ~mask.any(-1)
    return mask


def self_and_copies_mask(tokens: torch.Tensor) -> torch.Tensor:
    """Rule 2's support, [batch, q, k]: key k <= q holds the query's own token (the query itself
    or an earlier copy). The BOS key (k = 0) never counts: BOS is the fallback, not a copy. The
    one definition every script uses for "self and copies"."""
    n = tokens.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril()
    mask = (tokens[:, :, None] == tokens[:, None, :]) & causal
    mask[:, :, 0] = False
    return mask


@dataclass
class PromptBatch:
    """Token ids [batch, pos] with BOS first, and the ideal mask [batch, pos, pos]."""

    tokens: torch.Tensor
    mask: torch.Tensor


def category_prompts(
    tokenizer,
    n_prompts: int,
    seq_len: int,
    seed: int = 0,
    categories: dict[str, list[str]] = CATEGORIES,
    repeat_prob: float = 0.0,
) -> PromptBatch:
    """BOS followed by ``seq_len`` category words drawn uniformly across categories (seeded).

    ``repeat_prob`` is the chance that a position repeats a word already in the prompt, so that
    copies (rule 2) are exercised.
    """
    if n_prompts < 1 or seq_len < 1:
        raise ValueError("n_prompts and seq_len must be positive")
    rng = np.random.default_rng(seed)
    ids = category_token_ids(tokenizer, categories)
    pools = list(ids.values())
    rows = []
    for _ in range(n_prompts):
        row: list[int] = []
        for _ in range(seq_len):
            if row and rng.random() < repeat_prob:
                row.append(row[rng.integers(len(row))])
            else:
                pool = pools[rng.integers(len(pools))]
                row.append(pool[rng.integers(len(pool))])
        rows.append([tokenizer.bos_token_id] + row)
    tokens = torch.tensor(rows)
    return PromptBatch(tokens, ideal_mask(tokens, token_category_map(tokenizer, categories)))


def random_token_prompts(
    tokenizer,
    n_prompts: int,
    seq_len: int,
    n_inserted: int,
    seed: int = 0,
    categories: dict[str, list[str]] = CATEGORIES,
) -> PromptBatch:
    """BOS + random non-category tokens with ``n_inserted`` category words at random positions."""
    rng = np.random.default_rng(seed)
    cat_of = token_category_map(tokenizer, categories)
    all_words = np.array(sorted(cat_of))
    vocab = tokenizer.vocab_size
    rows = []
    for _ in range(n_prompts):
        row = rng.integers(0, vocab - 1, size=seq_len)  # vocab - 1 excludes <|endoftext|>
        while any(int(t) in cat_of for t in row):
            row = np.array([t if int(t) not in cat_of else rng.integers(0, vocab - 1) for t in row])
        where = rng.choice(seq_len, size=min(n_inserted, seq_len), replace=False)
        row[where] = rng.choice(all_words, size=len(where))
        rows.append([tokenizer.bos_token_id] + row.tolist())
    tokens = torch.tensor(rows)
    return PromptBatch(tokens, ideal_mask(tokens, cat_of))


def repeated_token_prompts(
    tokenizer, n_prompts: int, seq_len: int, seed: int = 0, categories: dict[str, list[str]] = CATEGORIES
) -> PromptBatch:
    """Category prompts in which about half of the positions copy an earlier word."""
    return category_prompts(tokenizer, n_prompts, seq_len, seed, categories, repeat_prob=0.5)
