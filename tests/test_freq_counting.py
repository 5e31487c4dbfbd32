"""common.freq's token counting: identical to the original per-line loop, whichever backend.

Reference (independent of the code under test): the original repository's approach, every line
encoded on its own by the transformers GPT-2 tokenizer (``tokenizer.encode(line)``) into a
``collections.Counter``.
"""

from collections import Counter

import numpy as np
import pytest

from common import freq

pytest.importorskip("tiktoken", reason="tiktoken (requirements.txt) is the fast counting backend")

# Lines that stress the per-line rule: WikiText's " = Heading = " and " \n" blank lines, leading
# and trailing spaces and tabs before the newline (which a whole-text encode would merge across
# lines), CRLF, contractions, digits, non-Latin scripts, emoji, the literal "<|endoftext|>".
TRICKY = [
    " = Valkyria Chronicles III = \n", " \n", " \n", "\n", "\n",
    " Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : 戦場のヴァルキュリア3 ) , commonly\n",
    "   three leading spaces and two trailing  \n", "\ttab first\t\n", "trailing tab\t\n",
    "It's they'll we've I'd you're 'S 'LL\n", "1234567 89,000.5 3.14159\n",
    "Москва — столица России.\n", "東京は日本の首都です。\n", "😀 emoji 👍🏽 mixed\n",
    "a<|endoftext|>b <|endoftext|> c\n", "<|endoftext|>\n", "no newline at the end",
    "nbsp\u00a0and\u2003em space\u3000ideographic\n", "  \n", "\u2028line separator inside\n",
]


def per_line_reference(tokenizer, lines) -> np.ndarray:
    counter = Counter()
    for line in lines:
        counter.update(tokenizer.encode(line))
    counts = np.zeros(tokenizer.vocab_size, np.int64)
    for i, n in counter.items():
        counts[i] = n
    return counts


@pytest.fixture(scope="module")
def lines():
    from common.demo_corpus import demo_lines

    return TRICKY * 3 + demo_lines(300, seed=5) + TRICKY


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("backend", ["tiktoken", "huggingface"])
def test_counts_equal_the_per_line_loop(tokenizer, lines, backend, workers):
    want = per_line_reference(tokenizer, lines)
    got = freq.count_tokens(freq.string_batches(lines, 300), workers=workers, tokenizer=tokenizer, backend=backend)
    assert want[50256] == 3 * 4  # the literal "<|endoftext|>" is the special token, as in the reference
    assert np.array_equal(got, want)


def test_file_route_with_crlf_equals_the_per_line_loop(tokenizer, lines, tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes("".join(lines).replace("\n", "\r\n").encode())
    want = per_line_reference(tokenizer, freq.split_lines("".join(lines)))
    got = freq.count_tokens(freq.file_batches([path], batch_bytes=200), workers=2)
    assert freq.counting_backend() == "tiktoken"
    assert np.array_equal(got, want)


# Pieces of text where encoding lines joined could differ from encoding them one by one: every
# kind of whitespace GPT-2's pattern or str.split treat differently (newline, CR, CRLF, tab,
# vertical tab, form feed, NEL, no-break, ideographic and line-separator spaces, and \x1c, which
# Python calls a space and the pattern does not), runs of them, and what may follow them.
PIECES = [" ", "  ", "\t", "\n", "\n", "\n", "\r\n", "\r", "\x0b", "\x0c", "\x85", "\u00a0", "\u2028",
          "\u3000", "\x1c", "a", "Zq", "1", "23", "'s", "'", "!", ".,", "é", "東", "😀", "<|endoftext|>"]


def test_batches_encode_to_exactly_the_per_line_ids(tokenizer):
    """common.freq.batch_ids_tiktoken (one tiktoken call per batch, LINE_PAT_STR first in the
    pattern) against each line encoded on its own, with the plain GPT-2 pattern and with the
    Hugging Face tokenizer: seeded random text of PIECES, as a file blob (lines split on "\n",
    CRLF read as LF) and as a list of strings (some without a final newline, some holding several
    lines, each of which must be encoded on its own)."""
    import random

    rng = random.Random(0)
    enc = freq.tiktoken_encoding()
    for trial in range(400):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 80)))
        lines = freq.split_lines(text)
        want = [i for line in lines for i in enc.encode(line, allowed_special="all")]
        assert freq.batch_ids_tiktoken(text.encode()).tolist() == want, repr(text)
        assert freq.batch_ids_tiktoken(lines).tolist() == want, repr(text)
        if trial % 4 == 0:  # the independent reference, on a quarter of the texts (it is slow)
            assert want == [i for line in lines for i in tokenizer.encode(line)], repr(text)
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, 4)))
        strings = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]  # any number of "\n", anywhere
        assert freq.batch_ids_tiktoken(strings).tolist() == [
            i for s in strings for i in enc.encode(s, allowed_special="all")], repr(text)
    assert freq.batch_ids_tiktoken([]).tolist() == freq.batch_ids_tiktoken(b"").tolist() == []


def test_tiktoken_ids_equal_huggingface_for_every_code_point(tokenizer):
    """Every Unicode scalar value in runs of consecutive code points, and the first 12288 plus a
    seeded sample of the rest also after a space, between letters and digits and before a
    contraction: the vendored tiktoken encoding gives the Hugging Face tokenizer's ids exactly
    (letter/number/space classes come from two different regex engines' Unicode tables)."""
    import random

    enc = freq.tiktoken_encoding()
    cps = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    rich = cps[:0x3000] + random.Random(0).sample(cps[0x3000:], 4000)
    lines = ["".join(map(chr, cps[i:i + 256])) + "\n" for i in range(0, len(cps), 256)]
    for i in range(0, len(rich), 256):
        chunk = [chr(c) for c in rich[i:i + 256]]
        lines.append(" " + " ".join(c + "a" + c + "1" + c + "'s" for c in chunk) + "  \n")
    hf = tokenizer.backend_tokenizer.encode_batch_fast(lines, add_special_tokens=False)
    bad = [line[:40] for line, e in zip(lines, hf) if enc.encode_to_numpy(line, allowed_special="all").tolist() != e.ids]
    assert bad == []


def test_backend_follows_the_tokenizer(tokenizer):
    from common.gpt2_tokenizer import load_tokenizer

    assert freq.counting_backend() == "tiktoken" and freq.counting_backend(tokenizer) == "tiktoken"
    other = load_tokenizer()
    other.add_tokens(["zzqqxx"])  # no longer GPT-2's tokenizer: counted by itself
    assert freq.counting_backend(other) == "huggingface"
    counts = freq.count_tokens([["a zzqqxx b\n"]], tokenizer=other, vocab_size=len(other))
    assert counts[len(other) - 1] == 1
    shifted = load_tokenizer()
    shifted.backend_tokenizer.pre_tokenizer.add_prefix_space = True
    assert freq.counting_backend(shifted) == "huggingface"
