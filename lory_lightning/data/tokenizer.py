"""Train a byte-level BPE tokenizer (HF `tokenizers`) or load any saved one; an end-of-text token
separates documents."""

from __future__ import annotations

import json
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


def tokenizer_files(path: str | Path) -> list[Path]:
    """The files ``--tokenizer PATH`` names: a tokenizer.json, or a Hugging Face tokenizer folder's
    tokenizer.json and, when there is one, its tokenizer_config.json (which names the eos token)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{path}: no tokenizer.json in the folder (a fast tokenizer's save_pretrained "
                                    "writes one)")
        config = path / "tokenizer_config.json"
        return [path / "tokenizer.json"] + ([config] if config.is_file() else [])
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer file or folder; give a tokenizer.json, a Hugging Face "
                                "tokenizer folder, or leave it out to train one")
    return [path]


def load_tokenizer(path: str | Path) -> tuple[Tokenizer, int]:
    """A saved tokenizer (``tokenizer_files``) and the id of its own end-of-text token: the eos token its
    tokenizer_config.json names, else ``<|endoftext|>``."""
    files = tokenizer_files(path)
    tok = Tokenizer.from_file(str(files[0]))
    eos = None
    if len(files) > 1:
        try:
            eos = json.loads(files[1].read_text()).get("eos_token")
        except (json.JSONDecodeError, AttributeError) as err:
            raise ValueError(f"{files[1]}: not a JSON object ({err})") from err
        eos = eos.get("content") if isinstance(eos, dict) else eos
    if eos is None:
        return tok, eod_id(tok)
    idx = tok.token_to_id(eos)
    if idx is None:
        raise ValueError(f"{files[1]}: eos_token {eos!r} is not in {files[0]}")
    return tok, idx


def eod_id(tok: Tokenizer) -> int:
    idx = tok.token_to_id(EOD_TOKEN)
    if idx is None:
        raise ValueError(f"tokenizer has no end-of-document token {EOD_TOKEN!r} and names no eos token (a "
                         "tokenizer_config.json with eos_token beside its tokenizer.json); add one")
    return idx
