"""Train or load a byte-level BPE tokenizer (HF `tokenizers`); an end-of-document token separates documents."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOD_TOKEN = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE of ``vocab_size`` tokens trained on ``texts`` (streamed); EOD has id 0.

    Byte-level: every string round-trips exactly, and no text is ever out of vocabulary.
    """
    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size {vocab_size} is too small: a byte-level BPE needs at least 258 "
                         "(256 bytes, the end-of-document token and one merge)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOD_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer.json that has the end-of-document token."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer file; give a tokenizer.json or leave it out to train one")
    tok = Tokenizer.from_file(str(path))
    eod_id(tok)
    return tok


def eod_id(tok: Tokenizer) -> int:
    idx = tok.token_to_id(EOD_TOKEN)
    if idx is None:
        raise ValueError(f"tokenizer has no end-of-document token {EOD_TOKEN!r}; add it as a special token")
    return idx
