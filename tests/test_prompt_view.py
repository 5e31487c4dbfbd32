"""The head on a user's own text (common/prompt_view.py, characterize_head.py --prompt).

Ground truth, derived here independently of the library: the post's example prompt written out
word by word with each word's category looked up by hand in ``common.prompts.CATEGORIES`` (" 32"
is a number: the lists hold the original's numbers; " the" in a second text is in none), the ideal keys of every query from the three rules applied to that list in plain
Python, and the planted model's L1H5 pattern from TransformerLens' own ``run_with_cache`` (the
library stops its pass early through ``common.activations.capture``). The planted L1H5 follows
the rules by construction, so its mean cost on the prompt is below half what attention spread
evenly over the visible keys costs (computed here from the hand-derived ideal keys; the post's
separation: L1H5 0.6, every other head 1.2 or more) and below every other head of its layer,
while L1H0, the planted previous-token head, costs far more. Planted v4's L1H5 leaks mass to BOS
and to unrelated words (modest logits, a large generic part), so its cost is ~0.8 here, not v3's
near 0 (v3 asserted < 0.2); what it never attends to is itself or an earlier copy (rule 2: a net
self logit LOGIT_SELF = -6 against 3.75 for a category partner and 5.5 for BOS).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import run_main

TEXT = "<bos> cat horse blue sun apple 32 red snow sun rain happy 32 blue sun green"
WORDS = "cat horse blue sun apple 32 red snow sun rain happy 32 blue sun green".split()
BY_HAND = {"cat": "animals", "horse": "animals", "blue": "colours", "red": "colours", "green": "colours",
           "sun": "weather", "snow": "weather", "rain": "weather", "apple": "fruits", "happy": "emotions",
           "32": "numbers"}


def ideal_keys(q: int) -> set[int]:
    """The three rules on WORDS (position p = word p-1; 0 is BOS)."""
    if q == 0:
        return {0}
    w = WORDS[q - 1]
    keys = {k for k in range(1, q) if BY_HAND.get(w) and BY_HAND.get(WORDS[k - 1]) == BY_HAND[w]
            and WORDS[k - 1] != w}
    return keys or {0}


@pytest.fixture(scope="module")
def reference(planted_model):
    tokens = planted_model.to_tokens(" " + " ".join(WORDS))  # BOS prepended by TransformerLens
    _, cache = planted_model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_pattern")
    return tokens[0].tolist(), cache["blocks.1.attn.hook_pattern"][0].numpy()  # [head, q, k]


def test_prompt_view_against_the_rules_by_hand(planted_model, reference):
    from common.prompt_view import prompt_view

    tokens, patterns = reference
    view = prompt_view(planted_model, TEXT, 1, 5)
    assert view.tokens == tokens and len(tokens) == len(WORDS) + 1
    assert view.categories == ["BOS", *[BY_HAND.get(w, "none") for w in WORDS]]
    assert view.uncategorised == []
    other = prompt_view(planted_model, "<bos> cat the dog", 1, 5)  # a word outside every category
    assert other.uncategorised == [" the"] and other.categories == ["BOS", "animals", "none", "animals"]
    for q in range(len(tokens)):
        assert set(np.flatnonzero(view.ideal[q].numpy())) == ideal_keys(q), q
    assert np.allclose(view.patterns.numpy(), patterns, atol=1e-5)
    pat = patterns[5]
    cost = [-math.log(max(sum(pat[q, k] for k in ideal_keys(q)), 1e-6)) for q in range(1, len(tokens))]
    assert np.allclose(view.cost[1:], cost, atol=1e-5) and np.isnan(view.cost[0])
    assert view.score == pytest.approx(np.mean(cost), abs=1e-6)
    uniform = np.mean([-math.log(len(ideal_keys(q)) / (q + 1)) for q in range(1, len(tokens))])
    assert view.score < uniform / 2  # the planted L1H5 follows the rules
    heads = [prompt_view(planted_model, TEXT, 1, h).score for h in range(planted_model.cfg.n_heads)]
    assert view.score == pytest.approx(heads[5]) and view.score < min(heads[:5] + heads[6:])
    copies = [sum(pat[q, k] for k in range(1, q + 1) if WORDS[k - 1] == WORDS[q - 1]) for q in range(1, len(tokens))]
    assert np.allclose(view.self_mass[1:], copies, atol=1e-5)
    assert max(copies) < 0.01  # rule 2
    other = prompt_view(planted_model, TEXT, 1, 0)  # the previous-token head breaks the rules
    assert other.score > view.score + 1.0


def test_characterize_head_prompt_writes_pattern_page_and_figure(planted_model, tmp_path, reference):
    import characterize_head

    out = tmp_path / "prompt"
    asked = []
    real_render = characterize_head.render
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(characterize_head, "render", asked.append)
        run_main("characterize_head.py", "--model", "planted", "--prompt", TEXT, "--out", str(out))
    assert [str(a) for a in asked] == [str(out)]  # drawn by render, from the saved files only
    assert not list(out.glob("*.png"))
    table = pd.read_csv(out / "prompt_pattern.csv", keep_default_na=False)
    tokens, patterns = reference
    n = len(tokens)
    assert len(table) == n * (n + 1) // 2
    obs = np.zeros((n, n))
    obs[table["query"], table["key"]] = table["attention"]
    assert np.allclose(obs, np.tril(patterns[5]), atol=1e-5)
    assert set(table[table.query_token == " 32"].query_category) == {"numbers"}
    html = (out / "prompt_heads_L1.html").read_text()
    assert "unpkg.com" not in html and "<script src=\"http" not in html  # self-contained (local_src)
    start = html.index("{", html.index("CircuitsVis.AttentionPatterns"))
    props, _ = json.JSONDecoder().raw_decode(html[start:])  # the data the page draws: every head of layer 1
    assert props["tokens"] == [planted_model.tokenizer.decode([t]) for t in tokens]
    assert np.allclose(np.array(props["attention"]), patterns, atol=1e-5)
    assert np.array(props["attention"]).shape == (planted_model.cfg.n_heads, n, n)
    (png,) = real_render(out)
    assert png.name == "prompt_pattern.png" and png.stat().st_size > 10_000


def test_prompt_errors(planted_model, tmp_path):
    import characterize_head

    with pytest.raises(SystemExit):
        characterize_head.main(["--model", "planted", "--prompt", "  ", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="context"):
        characterize_head.main(["--model", "planted", "--prompt", " cat" * (planted_model.cfg.n_ctx + 5),
                                "--out", str(tmp_path / "b")])
