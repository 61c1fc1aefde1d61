"""Crafter's own episode statistics and score, so its analysis scripts read our results.

``stats_record`` is one line of the ``stats.jsonl`` that crafter's ``Recorder`` writes at the
end of an episode: ``length``, ``reward`` (crafter's reward summed, rounded to 0.1) and one
``achievement_<name>`` count per achievement. ``success_rates`` and ``crafter_score`` follow
crafter's analysis code: an achievement's success rate is the percentage of episodes that
unlocked it at least once, and the score is the geometric mean of ``1 + rate`` over the 22
achievements, minus 1: ``S = exp(mean_i ln(1 + s_i)) - 1`` with ``s_i`` in percent.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import crafter

from envs.errors import EnvSettingError, FileFormatError

ACHIEVEMENTS: tuple[str, ...] = tuple(crafter.constants.achievements)
STATS_FILE = "stats.jsonl"


def stats_record(length: int, reward: float, achievements: Mapping[str, int]) -> dict[str, Any]:
    """One episode as crafter's ``Recorder`` writes it (every achievement present, 0 if absent)."""
    unknown = sorted(set(achievements) - set(ACHIEVEMENTS))
    if unknown:
        raise EnvSettingError(f"unknown crafter achievement(s) {unknown}; known: {', '.join(ACHIEVEMENTS)}")
    record: dict[str, Any] = {"length": int(length), "reward": round(float(reward), 1)}
    for name in ACHIEVEMENTS:
        record[f"achievement_{name}"] = int(achievements.get(name, 0))
    return record


def achievements_of(record: Mapping[str, Any]) -> dict[str, int]:
    """The ``achievement_<name>`` counts of a stats record, by achievement name."""
    return {
        key[len("achievement_") :]: int(value)
        for key, value in record.items()
        if key.startswith("achievement_")
    }


def success_rates(episodes: Sequence[Mapping[str, int]]) -> dict[str, float]:
    """Percentage of ``episodes`` (achievement -> count at episode end) that unlocked each
    achievement at least once."""
    if not episodes:
        raise EnvSettingError("no episodes: success rates need at least one")
    return {
        name: 100.0 * sum(episode.get(name, 0) >= 1 for episode in episodes) / len(episodes)
        for name in ACHIEVEMENTS
    }


def crafter_score(rates: Mapping[str, float] | Iterable[float]) -> float:
    """crafter's score from success rates in percent, one per achievement (crafter's game has 22:
    ``success_rates`` gives them all; a subset scores that subset)."""
    values = list(rates.values()) if isinstance(rates, Mapping) else list(rates)
    if not values:
        raise EnvSettingError("the crafter score needs at least one achievement's success rate")
    if any(not 0.0 <= value <= 100.0 for value in values):
        raise EnvSettingError(f"success rates are percentages in [0, 100], got {values}")
    return math.exp(sum(math.log1p(value) for value in values) / len(values)) - 1.0


def write_stats(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``records`` as ``stats.jsonl`` atomically (``atomic_write_bytes``), so a crash never
    leaves a half-written file for crafter's scripts to misread."""
    from envs.data.format import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, "".join(json.dumps(dict(record)) + "\n" for record in records).encode())
    return path


def read_stats(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``stats.jsonl`` (ours or crafter's), checked line by line."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise FileFormatError(f"cannot read {path}: {error}") from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise FileFormatError(f"{path} line {number} is not JSON: {error}") from None
        if not isinstance(record, dict) or "length" not in record:
            raise FileFormatError(
                f"{path} line {number}: expected an object with length, reward, achievement_*"
            )
        records.append(record)
    return records
