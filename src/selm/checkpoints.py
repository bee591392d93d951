"""The check every reader of a model checkpoint folder makes first (training, the loop, evaluation,
the DVC stages' preflight): the folder holds a config and a tokenizer, or the error names the
config key that pointed there."""

from __future__ import annotations

import os
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")  # fast, SentencePiece, BPE vocabulary


def check_checkpoint(path: str | os.PathLike, key: str) -> Path:
    """A checkpoint folder must exist and hold a config and a tokenizer; the error names the config key."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{key}={path}: not a model checkpoint (no config.json there)")
    if not (path / "tokenizer_config.json").is_file() or not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"{key}={path}: the checkpoint has no tokenizer (tokenizer_config.json and one of "
                                f"{', '.join(TOKENIZER_FILES)} are needed)")
    return path
