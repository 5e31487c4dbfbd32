"""The GPT-2 BPE tokenizer, from the copy vendored in ``common/tokenizer/`` or any HF folder.

Only ``transformers`` is needed (no TransformerLens, no model): scripts and modules that only
tokenise import this, not :mod:`common.model`.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer"


def load_tokenizer(folder: str | Path = TOKENIZER_DIR) -> PreTrainedTokenizerBase:
    """The GPT-2 BPE tokenizer from a folder (default: the copy vendored with this repo).

    A fresh instance every call, never a shared one: TransformerLens changes the tokenizer it is
    given (its encode then prepends BOS), and such changes must not leak into other users.

    ``AutoTokenizer.from_pretrained`` is used on purpose: in transformers 5.x the constructor
    ``GPT2TokenizerFast(vocab_file=..., merges_file=...)`` silently builds an empty vocabulary.
    """
    return AutoTokenizer.from_pretrained(str(folder))
