"""Category words as natural text spells them (common.prompts.category_variant_ids) and where a
token is a whole word (common.natural_text.WordBoundaries). Expectations are written from the
GPT-2 tokenizer's own pieces and a reader's reading of the text, not from the code under test."""

import pytest
import torch


def _one(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def test_category_variants_are_the_listed_words_other_spellings(tokenizer):
    from common.prompts import CATEGORIES, category_token_ids, category_variant_ids

    listed = category_token_ids(tokenizer)
    variants = category_variant_ids(tokenizer)
    assert list(variants) == list(CATEGORIES)
    owner = {}
    for name, ids in variants.items():
        assert ids[: len(listed[name])] == listed[name]  # the listed spaced tokens first, in order
        spellings = {w.lower() for w in CATEGORIES[name]}
        for t in ids:
            assert tokenizer.decode([t]).strip().lower() in spellings, (name, tokenizer.decode([t]))
            assert owner.setdefault(t, name) == name  # no token in two categories
    # Spellings a reader expects, each one GPT-2 token (asserted), each in its category.
    for text, name in (("Monday", "days"), (" Red", "colours"), ("Red", "colours"), (" He", "pronouns"),
                       ("He", "pronouns"), (" john", "names"), ("John", "names"), (" It", "pronouns"),
                       ("And", "logical"), ("1990", "years")):
        t = _one(tokenizer, text)
        assert t is not None, text
        assert owner.get(t) == name, text
    # Not category words: the verb " may" / " march" and " i" (LOWERCASE_HOMOGRAPHS); " monday" is
    # two tokens (" m" + "onday"), so neither piece can stand for the day.
    for text in (" may", "may", " march", " i", "i"):
        assert _one(tokenizer, text) not in owner, text
    assert [tokenizer.decode([t]) for t in tokenizer.encode(" monday")] == [" m", "onday"]
    assert not set(tokenizer.encode(" monday")) & set(owner)


@pytest.mark.parametrize("text, whole", [
    # (text, the pieces that are whole words in it, in order): read off the text
    ("Redistribution", []),
    ("\nMonday's (Friday) notifies", ["\n", "Monday", "'s", " (", "Friday", ")"]),
    (" not notifies the 1990s", [" not", " the"]),
])
def test_whole_words(tokenizer, text, whole):
    from common.natural_text import word_boundaries

    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = [tokenizer.decode([i]) for i in ids]
    b = word_boundaries(tokenizer, 50257)
    got = b.whole_words(torch.tensor([[tokenizer.bos_token_id, *ids]]))[0]
    assert bool(got[0])  # BOS
    assert [p for p, w in zip(pieces, got[1:].tolist()) if w] == whole, pieces


def test_a_word_at_the_window_edge_counts(tokenizer):
    """The last position has no next token in the window: it is taken as a word end."""
    from common.natural_text import word_boundaries

    ids = tokenizer.encode(" on Monday", add_special_tokens=False)
    got = word_boundaries(tokenizer, 50257).whole_words(torch.tensor([ids]))
    assert got.all()
