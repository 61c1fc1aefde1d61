"""The observation contract shared by every instructcraft env (see docs/environments.md), and the JSON
spec of an action space that datasets, policy configs and checkpoints store."""

from __future__ import annotations

import string
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import read_from_shared_memory

from envs.errors import EnvSettingError, InstructionError

INSTRUCTION_MAX_LENGTH = 256
INSTRUCTION_CHARSET = string.printable


class InstructionText(spaces.Text):
    """``Text`` that gymnasium's shared-memory ``AsyncVectorEnv`` delivers intact.

    For a plain ``Text``, gymnasium decodes the shared buffer into strings once, when the
    vector env is built, and hands back those placeholder strings ever after. For this class
    it returns ``SharedInstructions``, which decodes the buffer each time it is read, so
    ``gym.vector.AsyncVectorEnv`` and ``gym.make_vec(..., vectorization_mode="async")`` work
    with their default arguments. Everything else is ``Text``'s behaviour.
    """


class SharedInstructions(Sequence[str]):
    """The instructions of every sub-env, read from the vector env's shared buffer on access.

    It behaves as a tuple of str (indexing, iteration, ``==`` with tuples); copying or pickling
    it gives a plain tuple of the strings at that moment, which is what the vector env returns
    to its caller under its default ``copy=True``.
    """

    def __init__(self, space: spaces.Text, buffer: Any, n: int) -> None:
        # int32 (n, max_length): character indices, padded with len(charset).
        self._codes = np.frombuffer(buffer.get_obj(), dtype=np.int32).reshape(n, space.max_length)
        self._characters = space.character_list
        self._cache: list[tuple[bytes, str]] = [(b"", "")] * n

    def _decode(self, row: int) -> str:
        codes = self._codes[row]
        raw = codes.tobytes()
        if self._cache[row][0] != raw:
            count = len(self._characters)
            text = "".join(self._characters[code] for code in codes.tolist() if code < count)
            self._cache[row] = (raw, text)
        return self._cache[row][1]

    def __len__(self) -> int:
        return len(self._codes)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return tuple(self._decode(row) for row in range(len(self))[index])
        return self._decode(range(len(self))[index])

    def __iter__(self) -> Iterator[str]:
        return (self._decode(row) for row in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (SharedInstructions, tuple, list)):
            return tuple(self) == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  (mutable, like the buffer behind it)

    def __copy__(self) -> tuple[str, ...]:
        return tuple(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> tuple[str, ...]:
        return tuple(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return tuple, (tuple(self),)

    def __repr__(self) -> str:
        return f"SharedInstructions({tuple(self)!r})"


@read_from_shared_memory.register(InstructionText)
def _read_instructions_from_shared_memory(
    space: InstructionText, shared_memory: Any, n: int = 1
) -> SharedInstructions:
    return SharedInstructions(space, shared_memory, n)


def instruction_space() -> InstructionText:
    return InstructionText(max_length=INSTRUCTION_MAX_LENGTH, min_length=0, charset=INSTRUCTION_CHARSET)


def observation_space(height: int, width: int) -> spaces.Dict:
    """``Dict(image=Box(0, 255, (H, W, 3), uint8), instruction=Text)``."""
    return spaces.Dict(
        {
            "image": spaces.Box(0, 255, (height, width, 3), np.uint8),
            "instruction": instruction_space(),
        }
    )


def check_instruction(instruction: str) -> str:
    """Reject instructions that the Text space cannot hold, naming the rule that failed."""
    if not isinstance(instruction, str):
        raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
    if len(instruction) > INSTRUCTION_MAX_LENGTH:
        raise InstructionError(
            f"instruction has {len(instruction)} characters, the limit is {INSTRUCTION_MAX_LENGTH}: shorten it"
        )
    bad = sorted({c for c in instruction if c not in INSTRUCTION_CHARSET})
    if bad:
        raise InstructionError(f"instruction contains non-printable characters {bad!r}: use printable ASCII")
    return instruction


def action_space_spec(space: Any) -> dict[str, Any]:
    """The JSON spec of a Discrete or MultiDiscrete action space: ``{"type": "Discrete", "n": 17}``
    or ``{"type": "MultiDiscrete", "nvec": [...]}``. The space is read by its class name, so the
    same-named spaces of other libraries (gym, minari) work too."""
    kind = type(space).__name__
    if kind == "Discrete":
        return {"type": "Discrete", "n": int(space.n)}
    if kind == "MultiDiscrete":
        return {"type": "MultiDiscrete", "nvec": [int(n) for n in np.asarray(space.nvec).reshape(-1)]}
    raise EnvSettingError(f"only Discrete or MultiDiscrete action spaces have a spec, got {kind}")


def action_space_from_spec(spec: dict[str, Any]) -> spaces.Discrete | spaces.MultiDiscrete:
    """The gymnasium space of an ``action_space_spec``."""
    if spec.get("type") == "Discrete":
        return spaces.Discrete(int(spec["n"]))
    if spec.get("type") == "MultiDiscrete":
        return spaces.MultiDiscrete(np.asarray(spec["nvec"], np.int64))
    raise EnvSettingError(f"an action space spec is Discrete or MultiDiscrete, got {spec}")
