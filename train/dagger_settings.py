"""DAgger's flags and its state file (``dagger.json``): what a run was started with, what a
resumed run must match, and the command that resumes it.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from envs import ray_rollouts
from envs.data.store import atomic_write_bytes
from train.config import ConfigError, RunConfig
from train.errors import SettingError
from train.report import strict_json

STATE = "dagger.json"

# The run config the rounds train with, written as a file that ``--config`` reads back.
RUN_CONFIG_FILE = "config.resolved.yaml"
# The plan a plan-following run's rollouts follow, as a plan file (``--plan`` reads it back).
PLAN_FILE = "plan.yaml"

# ``instructcraft dagger``'s flag for each DaggerConfig field (eval_seed and takeover have none:
# they are set in the run config's dagger section or by ``--set dagger.eval_seed=N``).
FLAGS = {
    "rounds": "--rounds",
    "episodes": "--episodes",
    "beta": "--beta",
    "beta_decay": "--beta-decay",
    "steps": "--steps-per-round",
    "eval_episodes": "--eval-episodes",
    "workers": "--workers",
}


def load_state(out: Path) -> dict[str, Any]:
    """The state ``save_state`` wrote in ``out``, or ``{}`` when there is none. A state file that
    cannot be read or is not one (a folder, no permission, bad UTF-8, broken JSON) is a
    ``SettingError`` naming it: the run it recorded cannot be resumed as it is."""
    path = out / STATE
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SettingError(
            f"cannot read {path} ({error.strerror or error}): DAgger's state file must be a readable "
            "file; make it readable to resume, or start a new run in another --out"
        ) from None
    except ValueError as error:  # bad UTF-8 (UnicodeDecodeError) or broken JSON
        raise SettingError(f"{path} is corrupt ({error}): start a new run in another --out") from None
    if not isinstance(state, dict) or not isinstance(state.get("dagger"), dict):
        found = "it has no 'dagger' settings" if isinstance(state, dict) else "it is no JSON object"
        raise SettingError(f"{path} is corrupt ({found}): start a new run in another --out")
    return state


def save_state(out: Path, state: dict[str, Any]) -> None:
    """``dagger.json`` replaced atomically and synced: a crash leaves the last state whole."""
    atomic_write_bytes(out / STATE, strict_json(state).encode())


def absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def plain(data: Any) -> Any:
    """``data`` as JSON gives it back (tuples become lists), so stored and new settings compare."""
    return json.loads(json.dumps(data, default=str))


def check_resume(root: Path, state: dict[str, Any], run: RunConfig, settings: dict[str, Any]) -> None:
    """A resumed run continues the same experiment: refuse any setting that changes what the
    remaining rounds do, naming it. The worker count changes nothing (rollouts are the same
    whatever it is); a changed training config is allowed and said, as ``bc --resume`` does."""
    dagger = run.dagger
    # A run recorded before a setting was kept is not checked on it.
    started = {flag: state.get(key, value) for flag, (key, value) in settings.items()}
    for flag in ("--data", "--init"):  # recorded as given by runs that kept relative paths
        started[flag] = absolute(started[flag])
    for name, value in dataclasses.asdict(dagger).items():
        if name != "workers":
            started[FLAGS.get(name, f"dagger.{name}")] = state.get("dagger", {}).get(name, value)
    given = {flag: value for flag, (_, value) in settings.items()}
    given.update(
        {FLAGS.get(n, f"dagger.{n}"): v for n, v in dataclasses.asdict(dagger).items() if n != "workers"}
    )
    changed = [flag for flag in started if plain(started[flag]) != plain(given[flag])]
    if changed:
        listed = ", ".join(f"{flag} {started[flag]!r} (now {given[flag]!r})" for flag in changed)
        raise ConfigError(
            f"{root} was started with {listed}: resume with the same settings "
            f"(`{resume_command(root, state)}`), or start a new run in another --out"
        )
    if "run" in state:
        # The dagger section was checked above, against the settings the run recorded.
        before = _flatten({name: section for name, section in state["run"].items() if name != "dagger"})
        now = _flatten(plain(run.to_dict()))
        notes = [
            f"{key} {before[key]!r} -> {now[key]!r}"
            for key in before
            if key in now and before[key] != now[key]
        ]
        if notes:
            print(f"note: resuming {root} with changed settings: {', '.join(notes)}", file=sys.stderr)


def resume_command(root: Path, state: dict[str, Any]) -> str:
    """The ``instructcraft dagger`` command that continues the run in ``root``: every setting
    the run was started with, read from its state, the Ray backend when the run uses one, and
    ``--resume``."""
    parts = ["instructcraft", "dagger"]
    if (root / RUN_CONFIG_FILE).exists():
        parts += ["--config", str(root / RUN_CONFIG_FILE)]
    parts += ["--data", state["data"], "--env", state["env_id"], "--out", str(root)]
    if state.get("expert"):
        parts += ["--expert", state["expert"]]
    if state.get("tasks"):
        parts += ["--tasks", *state["tasks"]]
    if state.get("init"):
        parts += ["--init", state["init"]]
    if state.get("plan"):
        parts += ["--plan", str(root / PLAN_FILE)]
    for name, flag in FLAGS.items():
        parts += [flag, str(state["dagger"][name])]
    session = ray_rollouts.active()  # the rollouts of this run go to Ray: so do the resumed run's
    if session is not None:
        parts += ["--ray-address", session.address] if session.address else ["--ray"]
    return shlex.join([*parts, "--resume"])
