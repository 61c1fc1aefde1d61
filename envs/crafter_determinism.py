"""A crafter world that replays exactly: the same seed and actions give the same episode.

Upstream crafter (1.8) is not a function of (seed, actions) alone, for two reasons:

- ``World`` keeps each chunk's objects in a ``set``, which iterates in memory-address order.
  ``Env._balance_object`` lists a chunk's creatures from that set and despawns
  ``creatures[random.randint(len)]``, so which zombie or cow disappears (and every world RNG
  draw after it) depends on where Python happened to allocate the objects.
- ``LocalView._noise`` (the grain of night frames) draws a canvas-sized array from the world
  RNG, so rendering a frame, or rendering one at another size, changes what happens next.

``DeterministicCrafterEnv`` fixes both for the envs it builds and for no other crafter user:
its world keeps chunk members in insertion order, and its local view draws night noise from
a stream of its own, a pure function of (episode seed, step, canvas size). Night frames still
carry the same noise (uniform 32..127 under the same vignette); only its samples differ from
upstream's. The world RNG then serves the dynamics alone.
"""

from __future__ import annotations

import collections
import hashlib
from typing import Any

import crafter
import numpy as np
from crafter import engine

# Personalizes the hash behind night noise: its stream is unrelated to every other seed.
NOISE_STREAM = b"crafter-noise"


class InsertionOrderedSet(dict):
    """The part of ``set`` that crafter's ``World`` uses (add, remove, iterate, len), iterating
    in insertion order: a dict whose keys are the members."""

    def add(self, item: Any) -> None:
        self[item] = None

    def remove(self, item: Any) -> None:
        del self[item]


class InsertionOrderedWorld(engine.World):
    """crafter's ``World`` with chunk members in insertion order instead of address order."""

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        # World.add/remove/move call .add/.remove on these; every chunk iterates in the order
        # objects entered it, the same in every process.
        self._chunks = collections.defaultdict(InsertionOrderedSet)


class SeededNoiseLocalView(engine.LocalView):
    """crafter's ``LocalView`` whose night noise never touches the world RNG.

    The noise of a frame comes from a generator whose state is a hash of ``noise_key``
    (episode seed, episode, step; the env sets it each step) and the canvas size, so a frame
    is a pure function of the world state: rendering it again, at any size, changes nothing.
    """

    noise_key: tuple[int, ...] = (0, 0, 0)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._noise_bits = np.random.PCG64(0)
        self._noise_rng = np.random.Generator(self._noise_bits)

    def _noise(self, canvas: np.ndarray, amount: float, stddev: float) -> np.ndarray:
        height, width = canvas.shape[:2]
        key = np.array([*self.noise_key, height, width], np.uint64).tobytes()
        digest = hashlib.blake2b(key, digest_size=32, person=NOISE_STREAM).digest()
        # Setting the state directly is several times cheaper than seeding a new generator.
        self._noise_bits.state = {
            "bit_generator": "PCG64",
            "state": {
                "state": int.from_bytes(digest[:16], "little"),
                "inc": int.from_bytes(digest[16:], "little") | 1,  # PCG64 needs an odd increment
            },
            "has_uint32": 0,
            "uinteger": 0,
        }
        noise = self._noise_rng.uniform(32, 127, (height, width))[..., None]
        mask = amount * self._vignette(canvas.shape, stddev)[..., None]
        return (1 - mask) * canvas + mask * noise


class DeterministicCrafterEnv(crafter.Env):
    """``crafter.Env`` (same arguments) whose episodes depend only on (seed, actions).

    crafter builds its world and the views that read it in ``__init__``; this env rebuilds the
    world and those views from the subclasses above (same arguments, taken from the ones crafter
    built), which change only the methods named there. Nothing is patched on crafter's classes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        old = self._world
        self._world = InsertionOrderedWorld(old.area, crafter.constants.materials, old._chunk_size)
        self._local_view = SeededNoiseLocalView(self._world, self._textures, self._local_view._grid)
        # SemanticView keeps its object types as the keys of _obj_ids, in crafter's order.
        self._sem_view = engine.SemanticView(self._world, list(self._sem_view._obj_ids))

    def _update_time(self) -> None:
        # Called by reset() and step() before anything renders: keys this step's night noise.
        super()._update_time()
        self._local_view.noise_key = (int(self._seed) % 2**64, self._episode, self._step)
