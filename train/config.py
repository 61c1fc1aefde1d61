"""Run configuration: the policy tree plus the settings of each way to train it.

A config file (YAML or JSON) holds ``{"policy": {...}, "train": {...}, "rl": {...}, "dagger": {...}}``
(every section optional); ``--set key=value``
overrides any field by its dotted path (``--set train.lr=1e-3``,
``--set policy.fusion_kwargs.fusion_type=gmu``). The resolved config is saved with every
checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from policies import ConfigError, PolicyConfig
from policies.config import build_dataclass


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (every field is a ``--set train.<name>=...`` flag)."""

    steps: int = 2000
    """optimizer steps"""
    batch_size: int = 16
    """chunks per batch (per process under torchrun)"""
    chunk_length: int = 32
    """steps per chunk; shorter episodes are padded and masked"""
    lr: float = 1e-3
    """peak AdamW learning rate"""
    weight_decay: float = 0.01
    warmup_steps: int = 100
    """linear warm-up, then cosine decay to min_lr_ratio * lr"""
    min_lr_ratio: float = 0.05
    value_coef: float = 0.5
    """weight of the value head's regression on discounted returns (pre-trains it for RL)"""
    gamma: float = 0.99
    """discount for the value targets"""
    grad_clip: float = 1.0
    """clip the global gradient norm (0 = off)"""
    augment_shift: int = 0
    """random shift augmentation in pixels, one shift per chunk (0 = off)"""
    workers: int = 0
    """DataLoader worker processes (0: batches are read in the training process, the fastest on
    2 CPU cores, where workers take cores from the model step; give more where spare cores can
    read while the model trains, e.g. on a GPU)"""
    cache_mib: int = 1024
    """decoded episodes each loader process keeps in memory, in MiB (0 = decode every row afresh)"""
    log_every: int = 25
    checkpoint_every: int = 500
    """write the checkpoint every N steps (and at the end)"""
    eval_every: int = 0
    """evaluate in the env every N steps (0 = only at the end if eval_episodes > 0)"""
    eval_episodes: int = 0
    eval_env: str = ""
    """env id for periodic evaluation (default: the dataset's env)"""
    seed: int = 0
    device: str = "auto"
    """"auto" (CUDA when present), "cpu" or "cuda"""
    amp: bool = True
    """bf16 autocast on CUDA (a CPU trains in fp32 unless amp_cpu is on too)"""
    amp_cpu: bool = False
    """bf16 autocast also on a CPU with native bf16 (AVX512-BF16 or AMX): 1.38x faster per step,
    but long runs fit worse under it (docs/results.md, E26-E28); ignored where bf16 is emulated"""
    skip_bad_episodes: bool = False
    """train on the readable episodes when some are missing or corrupt (default: refuse to start)"""
    pack: bool = True
    """pack several short episodes of one instruction into each chunk (a block-causal mask keeps
    them apart), so batches hold real steps instead of padding"""
    val_fraction: float = 0.05
    """episodes held out for validation loss and accuracy (0 = none); chosen by train.seed"""
    val_every: int = 0
    """validate every N steps (0 = at each checkpoint and at the end)"""

    def __post_init__(self) -> None:
        check_numbers(self, "train")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"train.val_fraction must be in [0, 1), got {self.val_fraction}")
        at_least(self, "train", 0, "val_every")
        at_least(self, "train", 1, "steps", "batch_size", "chunk_length", "log_every", "checkpoint_every")
        at_least(
            self,
            "train",
            0,
            "workers",
            "augment_shift",
            "warmup_steps",
            "eval_every",
            "eval_episodes",
            "cache_mib",
        )
        at_least(self, "train", 0, "seed", "weight_decay", "value_coef", "grad_clip")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        in_unit_interval(self, "train", "min_lr_ratio", "gamma")


@dataclass(frozen=True)
class RLConfig:
    """PPO settings (every field is a ``--set rl.<name>=...`` flag)."""

    n_envs: int = 8
    """parallel environments"""
    vec_env: str = "subproc"
    """"subproc" (one process per env) or "dummy" (all in this process)"""
    n_steps: int = 128
    """steps per env per rollout"""
    batch_size: int = 256
    """env steps per minibatch (whole episode segments are packed up to this size)"""
    n_epochs: int = 4
    lr: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float = 0.0
    """stop an update's epochs early past 1.5 x this approximate KL (0 = off)"""
    kl_coef: float = 0.0
    """weight of KL(policy || reference) toward the --init (BC) policy (0 = off)"""
    kl_decay: float = 1.0
    """kl_coef is multiplied by this after every update (VPT-style decay)"""
    bc_coef: float = 0.0
    """weight of an auxiliary BC loss on rl.bc_data (0 = off)"""
    bc_data: str = ""
    """native dataset for the auxiliary BC loss"""
    bc_batch_size: int = 4
    """chunks per auxiliary BC batch"""
    max_tokens: int = 128
    """instruction length in byte tokens inside the vector env"""
    checkpoint_every: int = 10_000
    """env steps between checkpoints (and one at the end)"""
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_numbers(self, "rl")
        at_least(self, "rl", 1, "n_envs", "n_steps", "n_epochs", "bc_batch_size", "max_tokens")
        # Advantages are normalized over each minibatch: one step has no spread to divide by.
        at_least(self, "rl", 2, "batch_size")
        at_least(self, "rl", 1, "checkpoint_every")
        at_least(self, "rl", 0, "seed", "ent_coef", "vf_coef", "target_kl", "kl_coef", "bc_coef")
        in_unit_interval(self, "rl", "gamma", "gae_lambda")
        if self.vec_env not in ("subproc", "dummy"):
            raise ConfigError(f"rl.vec_env must be 'subproc' or 'dummy', got {self.vec_env!r}")
        for name in ("lr", "clip_range", "max_grad_norm"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"rl.{name} must be > 0, got {getattr(self, name)}")
        if self.bc_coef > 0 and not self.bc_data:
            raise ConfigError("rl.bc_coef > 0 needs rl.bc_data=PATH (a native dataset of demonstrations)")
        if not 0 < self.kl_decay <= 1:
            raise ConfigError(f"rl.kl_decay must be in (0, 1], got {self.kl_decay}")


@dataclass(frozen=True)
class DaggerConfig:
    """DAgger settings (every field is a ``--set dagger.<name>=...`` setting; most have a flag of
    ``instructcraft dagger`` too, ``train.dagger_settings.FLAGS``)."""

    rounds: int = 3
    """rounds of rollouts + relabelling + fine-tuning after the round-0 policy"""
    episodes: int = 200
    """learner episodes rolled out (and labelled) per round"""
    beta: float = 0.5
    """probability of executing the expert's action in round 1"""
    beta_decay: float = 0.5
    """beta is multiplied by this every round (0 = pure learner rollouts after round 1)"""
    steps: int = 400
    """BC fine-tuning steps per round on the aggregated dataset"""
    eval_episodes: int = 40
    """learner-only evaluation episodes after each round (0 = off)"""
    eval_seed: int = 100_000
    """evaluation episode i uses seed eval_seed + i"""
    workers: int = 2
    """rollout and evaluation processes (changes no result)"""
    takeover: tuple[int, int] | None = None
    """[first, last]: in each rollout the expert alone acts from a step drawn uniformly in
    first..last (before it, beta's mixture), so the aggregate holds the learner's states at that
    point of an episode and the expert's own way on from them (null: the mixture throughout)"""

    def __post_init__(self) -> None:
        check_numbers(self, "dagger")
        at_least(self, "dagger", 1, "rounds", "episodes", "steps", "workers")
        at_least(self, "dagger", 0, "eval_episodes", "eval_seed")
        if self.takeover is not None and not 1 <= self.takeover[0] <= self.takeover[1]:
            raise ConfigError(
                f"dagger.takeover must be [first, last] env steps with 1 <= first <= last, "
                f"got {list(self.takeover)}"
            )
        if not 0.0 <= self.beta <= 1.0 or not 0.0 <= self.beta_decay <= 1.0:
            raise ConfigError(
                f"dagger.beta and dagger.beta_decay must be in [0, 1], got {self.beta} and {self.beta_decay}"
            )

    def beta_for(self, round_: int) -> float:
        return self.beta * self.beta_decay ** (round_ - 1)


def check_numbers(config: Any, section: str) -> None:
    """Every float field finite (``nan`` passes every comparison, so it is refused first)."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{section}.{item.name} must be a finite number, got {value}")


def at_least(config: Any, section: str, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise ConfigError(f"{section}.{name} must be >= {minimum}, got {value}")


def in_unit_interval(config: Any, section: str, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not 0 <= value <= 1:
            raise ConfigError(f"{section}.{name} must be in [0, 1], got {value}")


SECTIONS = {"policy", "train", "rl", "dagger"}


@dataclass(frozen=True)
class RunConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    dagger: DaggerConfig = field(default_factory=DaggerConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.to_dict(),
            "train": dataclasses.asdict(self.train),
            "rl": dataclasses.asdict(self.rl),
            "dagger": dataclasses.asdict(self.dagger),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        unknown = sorted(set(data) - SECTIONS)
        if unknown:
            raise ConfigError(f"unknown top-level key(s) {unknown}; expected {sorted(SECTIONS)}")
        return cls(
            build_dataclass(PolicyConfig, data.get("policy") or {}, "policy."),
            build_dataclass(TrainConfig, data.get("train") or {}, "train."),
            build_dataclass(RLConfig, data.get("rl") or {}, "rl."),
            build_dataclass(DaggerConfig, data.get("dagger") or {}, "dagger."),
        )


def parse_value(text: str) -> Any:
    """``--set`` values are YAML scalars or lists: 1e-3, true, [16, 32], cross_attention."""
    return yaml.safe_load(text)


# Which command reads which section; a ``--set`` for a section the command does not read is refused.
USED_BY = {
    "policy": ("bc", "dagger", "rl"),
    "train": ("bc", "dagger"),
    "rl": ("rl",),
    "dagger": ("dagger",),
}


def refuse_unused_settings(overrides: list[str], sections: tuple[str, ...], command: str) -> None:
    """Refuse a ``--set`` for a config section ``command`` does not read (``rl --set train.steps=2``
    would otherwise run as if nothing was set). Unknown sections are left to ``RunConfig.from_dict``."""
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        section = key.split(".", 1)[0]
        if section in SECTIONS and section not in sections:
            read = " and ".join(f"{name}.*" for name in sections)
            users = " and ".join(f"`instructcraft {name}`" for name in USED_BY[section])
            raise ConfigError(
                f"--set {key}: `instructcraft {command}` reads only the {read} settings and would ignore "
                f"{section}.* (read by {users}): drop it"
            )


def read_config_file(path: Path, holds: str = f"sections ({sorted(SECTIONS)})") -> dict[str, Any]:
    """The mapping a YAML or JSON file holds (``holds`` says what, for the error otherwise)."""
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text) or {}
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds {type(data).__name__}, not a mapping of {holds}")
    return data


def _merge(into: dict[str, Any], data: dict[str, Any]) -> None:
    """``data``'s values written over ``into``'s, section by section (nested mappings merge)."""
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def set_dotted(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    """``data[a][b] = value`` for ``key`` "a.b" (sections made as needed); ``where`` names the
    setting in the error when a part is not a section."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {part} is not a section")
    node[parts[-1]] = value


def load_run_config(
    path: str | Path | None, overrides: list[str] | None = None, base: dict[str, Any] | None = None
) -> RunConfig:
    """The run config: ``base`` (a resumed run's recorded config; default: the dataclasses'
    defaults), then what the file at ``path`` sets, then each ``--set key=value`` of ``overrides``."""
    data: dict[str, Any] = copy.deepcopy(base) if base else {}
    if path is not None:
        _merge(data, read_config_file(Path(path)))
    for override in overrides or []:
        if "=" not in override:
            raise ConfigError(f"--set expects key=value, got {override!r}")
        key, value = override.split("=", 1)
        set_dotted(data, key.strip(), parse_value(value), f"--set {key}")
    try:
        return RunConfig.from_dict(data)
    except TypeError as error:
        raise ConfigError(str(error)) from None


def changed_settings(
    before: dict[str, Any], after: RunConfig, sections: tuple[str, ...]
) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (before, after)}`` for each setting of ``sections`` that differs between a
    recorded config (``RunConfig.to_dict()`` as JSON gave it back) and ``after``."""
    old = flatten({name: before.get(name) or {} for name in sections})
    new = flatten({name: after.to_dict()[name] for name in sections})
    return {key: (old[key], new[key]) for key in old if key in new and old[key] != new[key]}


def describe_changes(changed: dict[str, tuple[Any, Any]]) -> str:
    """``key old -> new, ...`` (the form every resume note uses)."""
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{dotted key: value}``; tuples as lists (JSON gives lists back)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat
