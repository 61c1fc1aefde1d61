"""Policy configuration: one tree of frozen dataclasses, serialized as JSON.

Unknown keys fail when a config loads; cross-field rules fail in ``__post_init__`` with the
field, the value and the rule in the message.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies.errors import ConfigError

POOLINGS = ("last", "mean", "cls")
TEXT_ENCODERS = ("minilm", "hf", "word")
# The fusion registry: ``fusion_kwargs.fusion_type`` -> the module class that implements it. Each
# fusion registers itself beside its class (``@register_fusion("gmu")``), so a name is written
# once; it lives here because the fusions import this module, and the config checks names
# without importing them. Adding a fusion: its file under policies/fusion/ and its import in
# policies/fusion/__init__.py (which imports every fusion module, registering them).
FUSIONS: dict[str, type] = {}

_Registered = typing.TypeVar("_Registered", bound=type)


def register_fusion(name: str) -> Callable[[_Registered], _Registered]:
    """Class decorator: ``name`` (a ``fusion_type``) builds the decorated fusion."""

    def register(cls: _Registered) -> _Registered:
        if name in FUSIONS:
            raise ConfigError(
                f"fusion_type {name!r} is registered twice: {FUSIONS[name].__qualname__} and {cls.__qualname__}"
            )
        FUSIONS[name] = cls
        return cls

    return register


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class ActionSpaceConfig:
    """``Discrete`` (one size) or factorized ``MultiDiscrete`` (one size per component)."""

    type: str = "Discrete"
    sizes: tuple[int, ...] = (17,)

    def __post_init__(self) -> None:
        _require(
            self.type in ("Discrete", "MultiDiscrete"),
            f"action_space.type must be Discrete or MultiDiscrete, got {self.type!r}",
        )
        _require(len(self.sizes) >= 1, "action_space.sizes must hold at least one size")
        _require(all(int(n) >= 1 for n in self.sizes), f"action_space.sizes must be >= 1, got {self.sizes}")
        _require(
            self.type == "MultiDiscrete" or len(self.sizes) == 1,
            f"action_space.sizes for Discrete must hold one size, got {self.sizes}",
        )

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ActionSpaceConfig:
        """From the dataset's JSON spec: {"type": "Discrete", "n": 17} or {"type": "MultiDiscrete", "nvec": [...]}."""
        if spec.get("type") == "Discrete":
            return cls("Discrete", (int(spec["n"]),))
        if spec.get("type") == "MultiDiscrete":
            return cls("MultiDiscrete", tuple(int(n) for n in spec["nvec"]))
        raise ConfigError(f"action space spec must be Discrete or MultiDiscrete, got {spec}")

    def to_spec(self) -> dict[str, Any]:
        if self.type == "Discrete":
            return {"type": "Discrete", "n": self.sizes[0]}
        return {"type": "MultiDiscrete", "nvec": list(self.sizes)}


@dataclass(frozen=True)
class TextConfig:
    """Instruction encoder.

    encoder: "minilm" (the packaged all-MiniLM-L6-v2, offline), "hf" (any local folder that
        transformers' AutoModel loads, given by ``path``) or "word" (a small trainable encoder over
        hashed words, for closed vocabularies and tiny configs).
    pooling: "last" (the last non-padding token, as designed), "mean" or "cls".
    finetune: train the pretrained encoder too (it is frozen and cached per instruction otherwise).
    """

    encoder: str = "minilm"
    path: str | None = None
    pooling: str = "last"
    finetune: bool = False
    max_tokens: int = 64
    word_buckets: int = 4096
    word_dim: int = 64

    def __post_init__(self) -> None:
        _require(
            self.encoder in TEXT_ENCODERS,
            f"text.encoder must be one of {TEXT_ENCODERS}, got {self.encoder!r}",
        )
        _require(self.pooling in POOLINGS, f"text.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        _require(self.encoder != "hf" or bool(self.path), "text.path is required when text.encoder is 'hf'")
        _require(self.max_tokens >= 1, f"text.max_tokens must be >= 1, got {self.max_tokens}")


VISION_ENCODERS = ("impala", "cells", "nature")
TOKEN_POOLINGS = ("average", "merge")


@dataclass(frozen=True)
class VisionConfig:
    """Frame encoder: uint8 frames to ``frame_tokens`` tokens per frame.

    encoder: "impala" (residual conv stacks, each halving the size; ``channels`` are their
        widths), "cells" (one conv whose kernel and stride are ``cell_size``, so each token is
        one cell of a world drawn on a grid, such as Crafter's 7-pixel cells, then
        ``cell_blocks`` residual 3x3 blocks at cell resolution, width ``channels[-1]``; the
        image is cropped to whole cells from its top-left corner) or "nature" (the DQN stack:
        8x8 stride 4, 4x4 stride 2, 3x3 stride 1; widths ``channels[:3]``).
    frame_tokens: a square number up to the final feature grid; the grid is reduced to
        sqrt(P) x sqrt(P) when it is larger, as ``token_pooling`` says.
    token_pooling: "average" (each token the mean of its patch of the grid) or "merge" (each
        token all of its patch's features side by side, as Swin's patch merging: nothing is
        averaged away, the projection to the fusion learns what to keep; needs the grid to be a
        multiple of sqrt(P), such as Crafter's 9x9 cells merged 3x3 into 9 tokens). Left empty,
        it follows the encoder: "merge" for "cells", "average" for the others (what they always
        did, so a config naming only an IMPALA or Nature encoder keeps its meaning).
    position_embedding: a learned vector per token position added to the frame tokens, so the
        fusion knows where in the frame each token lies (attention over a set of tokens is blind
        to their order). Checkpoints written before this field existed load without it.

    The default (cells of 7 pixels, Crafter's 9x9 view drawn at 64x64, merged 3x3 into 9 tokens)
    trains at a twelfth of the IMPALA stack's cost per frame, and on the same data and steps
    fitted better and reached higher BC success than 81 cell tokens at less than half their CPU
    time (README, "Frame encoders"). Checkpoints written before ``encoder`` existed load as
    IMPALA, before ``token_pooling`` existed as averaging.
    """

    image_size: tuple[int, int] = (64, 64)
    channels: tuple[int, ...] = (32,)
    frame_tokens: int = 9
    encoder: str = "cells"
    cell_size: int = 7
    cell_blocks: int = 2
    position_embedding: bool = True
    token_pooling: str = ""

    def __post_init__(self) -> None:
        if not self.token_pooling:
            object.__setattr__(self, "token_pooling", "merge" if self.encoder == "cells" else "average")
        _require(
            self.encoder in VISION_ENCODERS,
            f"vision.encoder must be one of {VISION_ENCODERS}, got {self.encoder!r}",
        )
        _require(len(self.channels) >= 1, "vision.channels must hold at least one stack width")
        _require(
            self.encoder != "nature" or len(self.channels) == 3,
            f"vision.channels for the nature encoder must hold 3 widths, got {self.channels}",
        )
        _require(self.cell_size >= 1, f"vision.cell_size must be >= 1, got {self.cell_size}")
        _require(self.cell_blocks >= 0, f"vision.cell_blocks must be >= 0, got {self.cell_blocks}")
        side = round(self.frame_tokens**0.5)
        _require(
            side * side == self.frame_tokens and side >= 1,
            f"vision.frame_tokens must be a square number (1, 4, 16, 64, 81, ...), got {self.frame_tokens}",
        )
        grid = self.grid
        _require(
            min(grid) >= side,
            f"vision.frame_tokens={self.frame_tokens} needs a {side}x{side} grid but the {self.encoder} "
            f"encoder ends at {grid[0]}x{grid[1]} for image_size={self.image_size}",
        )
        _require(
            self.token_pooling in TOKEN_POOLINGS,
            f"vision.token_pooling must be one of {TOKEN_POOLINGS}, got {self.token_pooling!r}",
        )
        _require(
            self.token_pooling != "merge" or (grid[0] % side == 0 and grid[1] % side == 0),
            f"vision.token_pooling='merge' needs the {grid[0]}x{grid[1]} feature grid to split into "
            f"{side}x{side} equal patches (frame_tokens={self.frame_tokens}); pick frame_tokens whose "
            "square root divides the grid, or token_pooling='average'",
        )

    @property
    def grid(self) -> tuple[int, int]:
        """The final feature grid (height, width) of the encoder for ``image_size``."""
        height, width = self.image_size
        if self.encoder == "cells":
            return height // self.cell_size, width // self.cell_size
        if self.encoder == "nature":
            for kernel, stride in ((8, 4), (4, 2), (3, 1)):
                height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
            return height, width
        for _ in self.channels:
            height, width = (height + 1) // 2, (width + 1) // 2
        return height, width


@dataclass(frozen=True)
class FusionConfig:
    """The seed's ``fusion_kwargs``: ``fusion_type``, ``projection_dim`` and type-specific fields.

    num_blocks, num_heads, mlp_ratio, gated: attention fusions (cross_attention, self_attention).
    max_history: frames of history a step sees (a sliding window bounding memory).
    history_stride: of that window, a step reads only the frames a multiple of this many steps
        back (1: every frame; 8 with max_history 256: 32 frames spanning 256 steps).
    late_combine: how the late fusion combines per-modality logits ("weighted" or "mean").
    recency_bias: cross_attention only: each head adds -slope * (age of the frame in steps) to
        its scores, with a learned slope per block and head (ALiBi), so a fresh model reads the
        present frame most.
    """

    fusion_type: str = "cross_attention"
    projection_dim: int = 128
    num_blocks: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    gated: bool = False
    max_history: int = 512
    history_stride: int = 1
    late_combine: str = "weighted"
    recency_bias: bool = False

    def __post_init__(self) -> None:
        _require(
            self.fusion_type in FUSIONS,
            f"fusion_kwargs.fusion_type must be one of {sorted(FUSIONS)}, got {self.fusion_type!r}",
        )
        _require(
            self.projection_dim >= 1, f"fusion_kwargs.projection_dim must be >= 1, got {self.projection_dim}"
        )
        _require(
            self.projection_dim % 2 == 0,
            f"fusion_kwargs.projection_dim must be even (sinusoidal time embedding), got {self.projection_dim}",
        )
        _require(self.num_blocks >= 1, f"fusion_kwargs.num_blocks must be >= 1, got {self.num_blocks}")
        _require(self.num_heads >= 1, f"fusion_kwargs.num_heads must be >= 1, got {self.num_heads}")
        _require(
            self.projection_dim % self.num_heads == 0,
            f"fusion_kwargs.projection_dim={self.projection_dim} must be divisible by num_heads={self.num_heads}",
        )
        _require(self.max_history >= 1, f"fusion_kwargs.max_history must be >= 1, got {self.max_history}")
        _require(
            1 <= self.history_stride <= self.max_history,
            f"fusion_kwargs.history_stride must be between 1 and max_history={self.max_history},"
            f" got {self.history_stride}",
        )
        _require(0.0 <= self.dropout < 1.0, f"fusion_kwargs.dropout must be in [0, 1), got {self.dropout}")
        _require(self.mlp_ratio > 0, f"fusion_kwargs.mlp_ratio must be > 0, got {self.mlp_ratio}")
        _require(
            self.late_combine in ("weighted", "mean"),
            f"fusion_kwargs.late_combine must be 'weighted' or 'mean', got {self.late_combine!r}",
        )
        _require(
            not self.recency_bias or self.fusion_type == "cross_attention",
            f"fusion_kwargs.recency_bias is implemented for fusion_type 'cross_attention' only, got "
            f"{self.fusion_type!r}: drop recency_bias or use cross_attention",
        )


@dataclass(frozen=True)
class PolicyConfig:
    """The whole policy. ``instruction_dropout``: probability, during training, of replacing the
    instruction by the learned null instruction (enables classifier-free guidance)."""

    action_space: ActionSpaceConfig = field(default_factory=ActionSpaceConfig)
    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    fusion_kwargs: FusionConfig = field(default_factory=FusionConfig)
    instruction_dropout: float = 0.1

    def __post_init__(self) -> None:
        _require(
            0.0 <= self.instruction_dropout < 1.0,
            f"instruction_dropout must be in [0, 1), got {self.instruction_dropout}",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, complete: bool = False) -> PolicyConfig:
        """``complete``: every field must be present (a checkpoint's config: a default may not
        be the value its weights were trained with); otherwise missing fields take defaults."""
        return build_dataclass(cls, data, "", complete=complete)

    @classmethod
    def from_json(cls, text: str) -> PolicyConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> PolicyConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from None
        try:
            return cls.from_dict(data)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None

    def replace(self, **changes: Any) -> PolicyConfig:
        """Dotted keys allowed: ``config.replace(**{"fusion_kwargs.fusion_type": "gmu"})``."""
        data = self.to_dict()
        for key, value in changes.items():
            _set_dotted(data, key, value)
        return PolicyConfig.from_dict(data)


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if part not in node or not isinstance(node[part], dict):
            raise ConfigError(f"unknown config key {key!r}")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"unknown config key {key!r}; known keys here: {sorted(node)}")
    node[parts[-1]] = value


def build_dataclass(cls: type, data: Any, prefix: str = "", *, complete: bool = False) -> Any:
    """A (nested) frozen dataclass from JSON-like data. Unknown keys fail; every value must have
    its field's type (``bool`` is not an int, ``2.5`` is not an int, an int is a fine float);
    lists become tuples; numbers written as strings (YAML reads ``1e-3`` as a string) become
    numbers. ``complete``: a missing field fails too, at every level, instead of taking its
    default."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) {[prefix + k for k in unknown]}; known keys: {sorted(names)}")
    absent = [prefix + name for name in names if name not in data]
    if complete and absent:
        more = f" (and {', '.join(absent[1:])})" if len(absent) > 1 else ""
        raise ConfigError(
            f"{absent[0]} is missing{more}: a checkpoint's config names every field its weights were "
            "built with, and today's default may not be the value they were trained with; restore it "
            "from the run's run.json or the config it was trained with"
        )
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}", complete) for name, value in data.items()}
    return cls(**kwargs)


_TYPE_NAMES = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}


def _type_name(hint: Any) -> str:
    if hint in _TYPE_NAMES:
        return _TYPE_NAMES[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if arg is type(None) else _type_name(arg) for arg in args)
    if origin in (tuple, list):
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0]).removeprefix('an ').removeprefix('a ')}s"
        if origin is tuple:
            return f"a list of {len(args)} values"
        return (
            f"a list of {_type_name(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
        )
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _wrong(hint: Any, value: Any, name: str) -> ConfigError:
    return ConfigError(f"{name} must be {_type_name(hint)}, got {value!r} ({type(value).__name__})")


def _coerce(hint: Any, value: Any, name: str, complete: bool = False) -> Any:
    """``value`` checked (and, for lists and numeric strings, converted) against ``hint``."""
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, f"{name}.", complete=complete)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        sections = [arg for arg in args if dataclasses.is_dataclass(arg)]
        if isinstance(value, dict) and len(sections) == 1:  # a section's own error names its key
            return build_dataclass(sections[0], value, f"{name}.", complete=complete)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, name)
            except ConfigError:
                continue
        raise _wrong(hint, value, name)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _wrong(hint, value, name)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{name} must be {_type_name(hint)}, got {list(value)!r}")
            items = [
                _coerce(arg, item, f"{name}[{i}]")
                for i, (arg, item) in enumerate(zip(args, value, strict=True))
            ]
        else:
            item_hint = args[0] if args else Any
            items = [_coerce(item_hint, item, f"{name}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if not isinstance(value, bool):
            raise _wrong(hint, value, name)
        return value
    if hint is int:
        if isinstance(value, str):
            number = _number(value, hint, name)
            if not number.is_integer():
                raise _wrong(hint, value, name)
            return int(number)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(hint, value, name)
        return value
    if hint is float:
        if isinstance(value, str):
            return _number(value, hint, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong(hint, value, name)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _wrong(hint, value, name)
        return value
    return value


def _number(text: str, hint: Any, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _wrong(hint, text, name) from None
