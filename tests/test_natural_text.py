"""Category words as natural text spells them (common.prompts.category_variant_ids) and where a
token is a whole word (common.natural_text.WordBoundaries). Expectations are written from the
GPT-2 tokenizer's own pieces and a reader's reading of the text, not from the code under test."""

import os
import random

import numpy as np
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


# ---------------------------------------------------------------------------------------------
# Token ids of natural text: chunking, tiktoken vs the Hugging Face tokenizer, files, the cache.
# The reference is written here from the definition (module docstring of common.natural_text):
# lines as str.splitlines sees them, cut after the first line end at or past chunk_chars
# characters, each chunk encoded on its own by the Hugging Face tokenizer.
# ---------------------------------------------------------------------------------------------


SEPARATORS = ["\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
VARIED = [
    "Hello world.\nThe cat sat.\n\nIt's 1990's; we've 12,345 cats!\n",
    "   leading spaces\n\n\n\ntrailing   \n \n  \n\t\ttabs\t\n" + " " * 40 + "x" + " " * 17 + "\n",
    "windows\r\nline\r\nends\r\n\r\n\r\nand a lone\rcarriage return\r",
    "unicode: café naïve Ωμέγα Москва 東京 سلام 🙂🙃👍🏽 e\u0301 \u200b\u00a0nbsp \ufeffbom \ufffd\n",
    "separators\x0bvt\x0cff\x1cfs\x1dgs\x1ers\x85nel\u2028ls\u2029ps end",
    "special <|endoftext|> token and <|endoftext|><|endoftext|>\n<|endoftext|>",
    "",
    "\n",
    "no newline at all, a single line that is much longer than a chunk " * 3,
]


def _reference_chunks(text, chunk_chars):
    chunks, cur, size = [], [], 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        size += len(line)
        if size >= chunk_chars:
            chunks.append("".join(cur))
            cur, size = [], 0
    if cur:
        chunks.append("".join(cur))
    return chunks


def _reference_ids(tokenizer, text, chunk_chars):
    return [i for c in _reference_chunks(text, chunk_chars) for i in tokenizer.encode(c, add_special_tokens=False)]


def _random_text(rng, n):
    alphabet = list("abcdefgh XYZ   .,'!?0123456789") + ["é", "東", "🙂", "\t", "  ", "'s", "<|endoftext|>"]
    return "".join(rng.choice(alphabet + SEPARATORS) for _ in range(n))


def _split(text, rng, max_piece):
    pieces, i = [], 0
    while i < len(text):
        k = rng.randint(1, max_piece)
        pieces.append(text[i : i + k])
        i += k
    return pieces


@pytest.mark.parametrize("seed", range(20))
def test_chunks_are_the_shortest_runs_of_whole_lines(seed):
    """Whatever the pieces the text arrives in (cutting "\r\n" in two, or a line), the chunks
    are the reference's: whole lines, cut once at least chunk_chars characters are gathered."""
    from common.natural_text import line_chunks

    rng = random.Random(seed)
    text = _random_text(rng, rng.randint(0, 400))
    for chunk_chars in (1, 2, 5, 17, 60, 1000):
        want = _reference_chunks(text, chunk_chars)
        for max_piece in (1, 3, 50, 10_000):
            assert list(line_chunks(_split(text, rng, max_piece), chunk_chars)) == want, (chunk_chars, max_piece)


@pytest.mark.parametrize("backend", ["tiktoken", "huggingface"])
def test_ids_equal_the_huggingface_tokenizer(tokenizer, backend):
    """tiktoken (the vendored GPT-2 BPE) and the fallback give exactly the Hugging Face tokenizer's
    ids for each chunk: unicode, whitespace runs, "\r\n", empty lines, special-token text, chunk
    boundaries everywhere (small chunk sizes) and nowhere (one chunk)."""
    from common.freq import tiktoken_encoding
    from common.natural_text import ids_dtype, tokenize_ids

    if backend == "tiktoken" and tiktoken_encoding() is None:
        pytest.skip("tiktoken is not installed")
    rng = random.Random(1)
    texts = VARIED + ["".join(VARIED)] + [_random_text(rng, 300) for _ in range(10)]
    for text in texts:
        for chunk_chars in (1, 7, 40, 10**9):
            got = tokenize_ids(tokenizer, text, backend=backend, chunk_chars=chunk_chars)
            assert got.dtype == ids_dtype(tokenizer) == np.uint16
            assert got.tolist() == _reference_ids(tokenizer, text, chunk_chars), (text[:40], chunk_chars)
    # one chunk is the whole text: the tokenizer's own ids for it
    text = "".join(VARIED)
    assert tokenize_ids(tokenizer, text, backend=backend).tolist() == tokenizer.encode(text, add_special_tokens=False)


def test_default_backend_is_tiktoken_for_gpt2(tokenizer):
    from common.gpt2_tokenizer import load_tokenizer
    from common.natural_text import encoder_backend, tokenize

    assert encoder_backend(tokenizer) == "tiktoken"
    other = load_tokenizer()
    other.add_tokens(["zzqqxx"])  # no longer GPT-2's tokenizer: encoded by itself
    assert encoder_backend(other) == "huggingface"
    assert tokenize(other, "a zzqqxx b") == other.encode("a zzqqxx b", add_special_tokens=False)
    assert isinstance(tokenize(tokenizer, "a b")[0], int)


@pytest.fixture
def text_cache(tmp_path, monkeypatch):
    """A fresh cache folder, and small chunks and file pieces so that boundaries fall everywhere."""
    import common.natural_text as nt

    monkeypatch.setenv("L1H5_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("L1H5_TEXT_CACHE", raising=False)
    monkeypatch.setattr(nt, "CHUNK_CHARS", 64)
    monkeypatch.setattr(nt, "PIECE_CHARS", 5)
    return tmp_path / "cache" / "text_ids"


def _write_corpus(folder):
    """A folder of .txt files with CRLF, lone CR, invalid UTF-8, a BOM and multi-byte characters
    (split across pieces of 5 characters), plus a file that is not read."""
    rng = random.Random(7)
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_bytes(b"second file\r\nwith CRLF\r\n\r\nand lone\rCR \xff\xfe invalid \xe6\x9d bytes")
    (folder / "a.txt").write_bytes("\ufefffirst: café 東京 🙂\n\n".encode() * 5)
    (folder / "sub" / "c.txt").write_text(_random_text(rng, 500), encoding="utf-8", newline="")
    (folder / "sub" / "empty.txt").write_text("")
    (folder / "notes.md").write_text("not read")


def _expected_file_ids(tokenizer, folder, chunk_chars=64):
    files = sorted(p for p in folder.rglob("*.txt"))
    text = "\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    return _reference_ids(tokenizer, text, chunk_chars)


def test_file_ids_are_streamed_cached_and_mapped(tmp_path, tokenizer, text_cache, monkeypatch):
    import common.natural_text as nt
    import common.text_ids_cache as tc

    corpus = tmp_path / "corpus"
    _write_corpus(corpus)
    want = _expected_file_ids(tokenizer, corpus)
    assert nt.read_text_path(corpus) == "\n".join(
        f.read_text(encoding="utf-8", errors="replace") for f in sorted(corpus.rglob("*.txt")))
    ids, description = tc.script_text_ids(str(corpus), "planted", tokenizer)
    assert description == f"local text {corpus}"
    assert ids.tolist() == want
    assert isinstance(ids, np.memmap) and not ids.flags.writeable and ids.dtype == np.uint16
    (entry,) = [p for p in text_cache.iterdir()]
    assert sorted(p.name for p in entry.iterdir()) == ["entry.json", "ids.npy"]
    assert not [p for p in text_cache.iterdir() if p.name.startswith(".")], "temporary folder left behind"

    def no_encoding(*a, **k):
        raise AssertionError("a valid entry must not be tokenised again")

    with monkeypatch.context() as m:
        m.setattr(nt, "encode_chunks", no_encoding)
        again, _ = tc.script_text_ids(str(corpus), "planted", tokenizer)
    assert again.tolist() == want
    # A changed file is a new key: tokenised again, the old entry removed.
    with open(corpus / "a.txt", "a", encoding="utf-8") as f:
        f.write("one more line\n")
    changed = tc.file_ids(corpus, tokenizer)
    assert changed.tolist() == _expected_file_ids(tokenizer, corpus) != want
    (new_entry,) = [p for p in text_cache.iterdir()]
    assert new_entry != entry
    # Another chunk size is another key.
    monkeypatch.setattr(nt, "CHUNK_CHARS", 1000)
    assert tc.file_ids(corpus, tokenizer).tolist() == _expected_file_ids(tokenizer, corpus, 1000)


@pytest.mark.parametrize("damage", ["flip", "truncate", "entry_json", "missing_ids", "header"])
def test_corrupt_entry_is_rebuilt(tmp_path, tokenizer, text_cache, capfd, damage):
    import common.text_ids_cache as tc

    corpus = tmp_path / "corpus"
    _write_corpus(corpus)
    want = tc.file_ids(corpus, tokenizer).tolist()
    (entry,) = list(text_cache.iterdir())
    ids_path = entry / "ids.npy"
    data = bytearray(ids_path.read_bytes())
    if damage == "flip":
        data[-1] ^= 0x01  # same size, one id changed
        ids_path.write_bytes(bytes(data))
    elif damage == "truncate":
        ids_path.write_bytes(bytes(data[:-2]))
    elif damage == "entry_json":
        (entry / "entry.json").write_text("{not json")
    elif damage == "missing_ids":
        ids_path.unlink()
    else:
        data[20:24] = b"XXXX"  # the .npy header's descr
        ids_path.write_bytes(bytes(data))
    capfd.readouterr()
    ids = tc.file_ids(corpus, tokenizer)
    assert ids.tolist() == want
    err = capfd.readouterr().err
    assert "rebuilding it" in err and len(err.strip().splitlines()) == 1, err
    assert tc.file_ids(corpus, tokenizer).tolist() == want
    assert capfd.readouterr().err == ""  # the rebuilt entry is valid


def test_a_folder_without_entry_json_is_replaced_by_a_new_entry(tmp_path, tokenizer, text_cache, capfd):
    """An entry folder that lost its entry.json (an interrupted removal, a hand edit) is not an
    entry: the ids are tokenised again and the folder replaced, as the weights cache does (before
    the two caches shared one entry writer, now common.disk_cache.write_entry, the rename failed
    and the text ids stayed uncached in every later run)."""
    import common.text_ids_cache as tc

    corpus = tmp_path / "corpus"
    _write_corpus(corpus)
    want = tc.file_ids(corpus, tokenizer).tolist()
    (entry,) = list(text_cache.iterdir())
    (entry / "entry.json").unlink()
    capfd.readouterr()
    ids = tc.file_ids(corpus, tokenizer)
    assert ids.tolist() == want and isinstance(ids, np.memmap)  # cached again, mapped back
    assert "cannot write" not in capfd.readouterr().err
    assert sorted(p.name for p in entry.iterdir()) == ["entry.json", "ids.npy"]
    assert not [p for p in text_cache.iterdir() if p.name.startswith(".")]


def test_unwritable_cache_gives_one_note_and_continues(tmp_path, tokenizer, text_cache, monkeypatch, capfd):
    import common.text_ids_cache as tc

    corpus = tmp_path / "corpus"
    _write_corpus(corpus)
    want = _expected_file_ids(tokenizer, corpus)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("L1H5_CACHE", str(blocker))
    capfd.readouterr()
    assert tc.file_ids(corpus, tokenizer).tolist() == want
    assert tc.file_ids(corpus, tokenizer).tolist() == want
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("note: cannot write the text-ids cache") and str(blocker) in err[0]
    monkeypatch.setenv("L1H5_CACHE", str(tmp_path / "off"))
    monkeypatch.setenv("L1H5_TEXT_CACHE", "0")
    assert tc.file_ids(corpus, tokenizer).tolist() == want
    assert not (tmp_path / "off").exists()


def test_text_errors_leave_no_entry(tmp_path, tokenizer, text_cache):
    import common.text_ids_cache as tc

    (tmp_path / "blank.txt").write_text(" \n\t\n")
    with pytest.raises(SystemExit, match="the text is empty"):
        tc.script_text_ids(str(tmp_path / "blank.txt"), "planted", tokenizer)
    with pytest.raises(SystemExit, match="no such file"):
        tc.script_text_ids(str(tmp_path / "missing.txt"), "planted", tokenizer)
    assert not text_cache.exists() or not any(text_cache.iterdir())
    if os.geteuid() != 0:  # root reads anything
        (tmp_path / "secret.txt").write_text("x")
        (tmp_path / "secret.txt").chmod(0)
        with pytest.raises(SystemExit, match="cannot read"):
            tc.script_text_ids(str(tmp_path / "secret.txt"), "planted", tokenizer)


def test_demo_text_is_tokenised_uncached(tokenizer, text_cache):
    from common.demo_corpus import demo_text
    from common.text_ids_cache import script_text_ids

    ids, description = script_text_ids(None, "planted", tokenizer)
    assert "demo" in description
    assert ids.tolist() == _reference_ids(tokenizer, demo_text(), 64)
    assert not text_cache.exists()


# ---------------------------------------------------------------------------------------------
# Consumers read slices of the array and give what the list gave.
# ---------------------------------------------------------------------------------------------


def test_windows_from_an_array_equal_windows_from_a_list():
    from common.natural_text import sample_windows

    ids = np.random.default_rng(0).integers(0, 50257, 1000).astype(np.uint16)
    a, sa = sample_windows(ids, 11, 7, 50256, seed=3)
    b, sb = sample_windows(ids.tolist(), 11, 7, 50256, seed=3)
    assert sa == sb and torch.equal(a, b) and a.dtype == torch.long
    assert all(a[r, 1:].tolist() == ids[s : s + 10].tolist() for r, s in enumerate(sa))


def test_successions_blockwise_and_reference_windows(tokenizer):
    """Mining on a memory-style uint16 array, block by block, finds what one pass over a list finds;
    reference windows avoid every mined span (checked token by token here)."""
    from common.successions import MAX_GAP, successor_index
    from succession_ablation import find_successions, mine_cases, reference_windows, separator_lookup

    text = ("Monday, Tuesday and then Wednesday. In May, June. 1, 2, 3 and four five six. "
            "Friday Saturday; Sunday Monday. ") * 40
    ids = tokenizer.encode(text)
    arr = np.asarray(ids, dtype=np.uint16)
    cats = ["days", "months", "digits", "number_words"]
    index = successor_index(tokenizer, cats)
    sep = separator_lookup(tokenizer, 50257)
    j1, g1 = find_successions(np.asarray(ids, dtype=np.int64), index, sep, block=10**9)
    assert len(j1) > 100
    for block in (1, 2, MAX_GAP, 13, 100):
        j2, g2 = find_successions(arr, index, sep, block=block)
        assert np.array_equal(j1, j2) and np.array_equal(g1, g2), block
    rows_a, toks_a, found_a = mine_cases(tokenizer, arr, cats, 30, 6, seed=2)
    rows_l, toks_l, found_l = mine_cases(tokenizer, ids, cats, 30, 6, seed=2)
    assert (rows_a, toks_a, found_a) == (rows_l, toks_l, found_l)
    assert all(type(r["answer_id"]) is int and ids[r["text_offset"]] == r["answer_id"] for r in rows_a)
    avoid = [(max(0, r["text_offset"] - 6), r["text_offset"] + 1) for r in rows_a]
    ref_a, off_a = reference_windows(arr, avoid, 8, 12, 50256, seed=5)
    ref_l, off_l = reference_windows(ids, avoid, 8, 12, 50256, seed=5)
    assert off_a == off_l and torch.equal(ref_a, ref_l) and len(off_a) == 8
    covered = {p for a, b in avoid for p in range(a, b)}
    for row, s in zip(ref_a, off_a):
        assert s % 11 == 0 and not covered & set(range(s, s + 11))
        assert row[1:].tolist() == ids[s : s + 11]
    # the free windows are exactly those no span touches: with every window touched, none is left
    every = [(s, s + 1) for s in range(0, len(ids), 11)]
    with pytest.raises(SystemExit, match="no window"):
        reference_windows(arr, every, 8, 12, 50256, seed=5)
