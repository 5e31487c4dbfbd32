"""Category lists, single-token checks, ideal masks on hand-written prompts, prompt builders."""

import pytest
import torch

from common.prompts import (
    CATEGORIES, GROUP_TOKENS, TokenizationError, category_prompts, category_token_ids, group_token_ids,
    ideal_mask, random_token_prompts, repeated_token_prompts, single_token_id, token_category_map,
)


def test_every_word_is_one_token_and_in_one_category(tokenizer):
    ids = category_token_ids(tokenizer)
    assert set(ids) == set(CATEGORIES)
    flat = [t for v in ids.values() for t in v]
    assert len(flat) == len(set(flat)) == sum(len(w) for w in CATEGORIES.values())
    group_ids, labels, groups = group_token_ids(tokenizer)
    assert len(group_ids) == 30 and len(set(group_ids)) == 30
    assert sum(len(v) for v in GROUP_TOKENS.values()) == 30


def test_multi_token_word_is_a_clear_error(tokenizer):
    assert single_token_id(tokenizer, "cat") == 3797
    with pytest.raises(TokenizationError, match=r"' pomegranate' is \d GPT-2 tokens"):
        single_token_id(tokenizer, "pomegranate")
    with pytest.raises(TokenizationError):
        category_token_ids(tokenizer, {"fruits": ["apple", "pomegranate"]})


def test_duplicate_word_across_categories_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="orange"):
        category_token_ids(tokenizer, {"a": ["orange"], "b": ["orange"]})


def test_ideal_mask_hand_written(tokenizer):
    # <bos> cat dog red cat blue Paris
    words = ["cat", "dog", "red", "cat", "blue", "Paris"]
    tokens = torch.tensor([[tokenizer.bos_token_id] + [single_token_id(tokenizer, w) for w in words]])
    cat_of = token_category_map(tokenizer)
    m = ideal_mask(tokens, cat_of)[0].int().tolist()
    expected = [
        [1, 0, 0, 0, 0, 0, 0],  # BOS
        [1, 0, 0, 0, 0, 0, 0],  # cat: nothing before -> BOS
        [0, 1, 0, 0, 0, 0, 0],  # dog -> cat
        [1, 0, 0, 0, 0, 0, 0],  # red: no colour before -> BOS
        [0, 0, 1, 0, 0, 0, 0],  # cat (copy): dog, never itself or the earlier cat
        [0, 0, 0, 1, 0, 0, 0],  # blue -> red
        [1, 0, 0, 0, 0, 0, 0],  # Paris: in no category -> BOS
    ]
    assert m == expected


def test_ideal_mask_only_copies_gives_bos(tokenizer):
    t = single_token_id(tokenizer, "Monday")
    tokens = torch.tensor([[tokenizer.bos_token_id, t, t, t]])
    m = ideal_mask(tokens, token_category_map(tokenizer))[0]
    assert m[1:, 0].all() and m[1:, 1:].sum() == 0


def test_builders_are_seeded_and_consistent(tokenizer):
    a = category_prompts(tokenizer, 4, 20, seed=3)
    b = category_prompts(tokenizer, 4, 20, seed=3)
    c = category_prompts(tokenizer, 4, 20, seed=4)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert a.tokens.shape == (4, 21) and (a.tokens[:, 0] == tokenizer.bos_token_id).all()
    assert (a.mask.sum(-1) >= 1).all()  # every query has somewhere to go
    rep = repeated_token_prompts(tokenizer, 4, 30, seed=0)
    dup = sum(len(r) - len(set(r)) for r in rep.tokens[:, 1:].tolist())
    assert dup >= 30  # about half the positions repeat a word
    rnd = random_token_prompts(tokenizer, 3, 25, n_inserted=5, seed=0)
    cat_of = token_category_map(tokenizer)
    assert [sum(int(t) in cat_of for t in r[1:]) for r in rnd.tokens.tolist()] == [5, 5, 5]
