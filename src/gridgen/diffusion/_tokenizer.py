"""Tokenizer files for the models with random weights: a byte-level CLIP vocabulary,
written locally so that no tokenizer is ever downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["local_tokenizer", "token_ids", "write_tokenizer_files"]

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for bytes, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    table: dict[int, int] = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = 256 + extra
            extra += 1
    return [chr(table[b]) for b in range(256)]


def write_tokenizer_files(directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a byte-level CLIP ``vocab.json`` (514 tokens) and an empty ``merges.txt``.

    Ids: 0..255 the bytes, 256..511 the bytes ending a word (``</w>``), 512 ``<|startoftext|>``,
    513 ``<|endoftext|>``. Returns ``(vocab_path, merges_path)``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    symbols = _bytes_to_unicode()
    tokens = [*symbols, *(s + "</w>" for s in symbols), BOS, EOS]
    vocab_path = directory / "vocab.json"
    merges_path = directory / "merges.txt"
    vocab_path.write_text(json.dumps({t: i for i, t in enumerate(tokens)}), "utf-8")
    merges_path.write_text("#version: 0.2\n", "utf-8")
    return vocab_path, merges_path


def local_tokenizer(directory: Path) -> Any:
    vocab, merges = write_tokenizer_files(directory)
    import transformers

    return transformers.CLIPTokenizer(
        str(vocab), str(merges), pad_token=EOS, model_max_length=77
    )


def token_ids(tokenizer: Any) -> dict[str, int]:
    return {
        "bos_token_id": int(tokenizer.bos_token_id),
        "eos_token_id": int(tokenizer.eos_token_id),
        "pad_token_id": int(tokenizer.pad_token_id),
    }
