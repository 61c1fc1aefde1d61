"""Agents that ship with the package: ``pretrained:<name>`` wherever a checkpoint is expected.

Each is a checkpoint folder (``config.json`` + ``model.safetensors``; the frozen text encoder
comes from its own package) under ``agent/pretrained/<name>/``, with a ``card.json`` saying how
it was trained and what it measured. A newcomer can evaluate, roll out and look at the attention
of a working agent without training one.

A Hugging Face Hub model id (``user/name``, a folder written by ``instructcraft export hub`` and
uploaded) is taken wherever a checkpoint is, when ``huggingface_hub`` is installed: it comes from
the local cache, or is downloaded unless ``HF_HUB_OFFLINE`` is set. A local path always wins.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from agent.errors import AgentSettingError
from policies.errors import CheckpointError

PREFIX = "pretrained:"
ROOT = Path(__file__).resolve().parent / "pretrained"
# What an agent is made of on the hub; anything else in the repo is left there.
HUB_FILES = ["config.json", "model.safetensors", "card.json"]
# The hub's repo ids: "namespace/name", each part letters, digits, '-', '_' and '.', starting
# with a letter or digit (so "./x", "../x" and "/x" are never one).
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_TRUE = {"1", "true", "yes", "on"}


def available() -> list[str]:
    """Names of the shipped agents."""
    if not ROOT.is_dir():
        return []
    return sorted(p.name for p in ROOT.iterdir() if (p / "config.json").is_file())


def is_hub_id(text: str) -> bool:
    """Whether ``text`` has the form of a hub model id ("user/name")."""
    return _HUB_ID.fullmatch(text) is not None and ".." not in text and "--" not in text


def resolve_checkpoint(checkpoint: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """``pretrained:<name>`` -> its folder; a "user/name" that is no local path -> its hub
    snapshot folder (``hub_snapshot``); any other value is returned unchanged."""
    text = os.fspath(checkpoint)
    if not text.startswith(PREFIX):
        if isinstance(checkpoint, str) and is_hub_id(text) and not os.path.lexists(text):
            return hub_snapshot(text)
        return checkpoint
    name = text[len(PREFIX) :]
    if name not in available():
        raise AgentSettingError(
            f"no shipped agent {name!r}; shipped: {', '.join(PREFIX + n for n in available()) or 'none'}"
        )
    return str(ROOT / name)


def _hub_offline(constants: Any) -> bool:
    # Read now, not when huggingface_hub was imported: a program may set it after.
    value = os.environ.get("HF_HUB_OFFLINE")
    return value.strip().lower() in _TRUE if value is not None else bool(constants.HF_HUB_OFFLINE)


def _hub_cache(constants: Any) -> str:
    """The hub cache folder the environment names now (huggingface_hub reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return str(constants.HF_HUB_CACHE)


def hub_snapshot(repo_id: str) -> str:
    """The local folder of hub model ``repo_id``'s files (HUB_FILES): from the cache, downloaded
    first unless offline (``HF_HUB_OFFLINE``). Raises ``CheckpointError`` naming both things
    ``repo_id`` could have meant when it is neither a local path nor a model to be had."""
    not_local = f"{repo_id!r} is no local checkpoint folder (there is no such path)"
    try:
        import huggingface_hub
        from huggingface_hub import constants
    except ImportError:
        raise CheckpointError(
            f"{not_local}, and reading it as a Hugging Face Hub model id needs huggingface_hub: "
            "pip install huggingface_hub (or pass the path of a checkpoint folder)"
        ) from None
    offline, cache = _hub_offline(constants), _hub_cache(constants)
    try:
        return huggingface_hub.snapshot_download(
            repo_id, local_files_only=offline, allow_patterns=HUB_FILES, cache_dir=cache
        )
    except Exception as error:  # not cached offline, no such repo, no network, no access
        if offline:
            where = (
                f"nor a Hugging Face Hub model in the local cache {cache} (offline: HF_HUB_OFFLINE is set)"
            )
        else:
            said = " ".join(str(error).split())[:300]  # the hub's messages run over several lines
            where = f"nor a Hugging Face Hub model that could be downloaded ({type(error).__name__}: {said})"
        raise CheckpointError(
            f"{repo_id!r} is neither a local checkpoint folder (there is no such path) {where}: pass the path of a checkpoint folder, or the id of a model on the "
            "hub (`instructcraft export hub` writes one to upload)"
        ) from None


def card(name: str) -> dict[str, Any]:
    """How a shipped agent was trained and what it measured (its ``card.json``)."""
    folder = Path(resolve_checkpoint(PREFIX + name))
    return json.loads((folder / "card.json").read_text())
