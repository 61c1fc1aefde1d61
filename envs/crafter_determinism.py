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
from typing import Any

import crafter
import numpy as np
from crafter import engine

# Mixed into the noise stream's seed so that it never coincides with the world RNG's seed.
NOISE_STREAM = 0x6E6F_6973


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

    The noise of a frame is drawn from ``noise_key`` (episode seed, episode, step), which the
    env sets each step, so a frame is a pure function of the world state: rendering it again,
    at any size, changes nothing.
    """

    noise_key: tuple[int, ...] = (0,)

    def _noise(self, canvas: np.ndarray, amount: float, stddev: float) -> np.ndarray:
        rng = np.random.default_rng([*self.noise_key, *canvas.shape[:2], NOISE_STREAM])
        noise = rng.uniform(32, 127, canvas.shape[:2])[..., None]
        mask = amount * self._vignette(canvas.shape, stddev)[..., None]
        return (1 - mask) * canvas + mask * noise


class DeterministicCrafterEnv(crafter.Env):
    """``crafter.Env`` (same arguments) whose episodes depend only on (seed, actions).

    crafter builds its world and views in ``__init__``; this env points those two instances at
    the subclasses above, which change only the methods named there. Nothing is patched on
    crafter's own classes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._world.__class__ = InsertionOrderedWorld
        self._local_view.__class__ = SeededNoiseLocalView
        self._world.reset()

    def _update_time(self) -> None:
        # Called by reset() and step() before anything renders: keys this step's night noise.
        super()._update_time()
        self._local_view.noise_key = (int(self._seed) % 2**63, self._episode, self._step)
