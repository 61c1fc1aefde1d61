"""A Crafter-Instruct expert that knows only what the agent could have seen.

The agent's frame shows crafter's local view: a 9 x 7 grid of cells centred on the player,
plus the inventory rows. This expert keeps a memory map of the cells that have been inside
that view during the episode, and plans with the same sub-goal chains and breadth-first
searches as ``crafter_planner``, on the memory alone:

- a cell never seen is unknown: never a target and never walked through (only cells seen to be
  free are walked on, so a plan never leads into a wall the agent could not have seen);
- materials are remembered as last seen; so are objects, but creatures (cows, zombies,
  skeletons, arrows) move, so outside the current view they no longer block a path; a cow seen
  earlier stays a target until its cell is seen again without it;
- the player's position, facing and inventory are read directly: the player is always at the
  view centre, faces where its sprite looks, and the inventory is drawn under the view.

When no target is known it explores: it walks to the nearest known free cell that borders
unknown cells (breadth-first, ties broken in the order left, right, up, down), over grass and
sand only while such a cell is reachable that way (tunnels lead into dark caves where skeletons
shoot). Because the view reaches 3 cells up and down but 4 sideways, in open ground this means
walking straight up, going around what blocks the way and along the world's edge. No
randomness: the action is a function of the memory and the player's state, and the memory is
a function of the frames seen.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.experts.crafter_expert import ACTION, CrafterExpert, object_kind

UNKNOWN = -1
# Objects that move: where they were last seen says little once the cell is out of view.
MOVING = ("Cow", "Zombie", "Skeleton", "Arrow")
SURFACE = ("grass", "sand")


def view_rectangle(env: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """(width, height) of the local view's grid in cells and the player's offset inside it.

    Read from crafter's own ``LocalView``, so the memory covers exactly the cells drawn.
    """
    local_view = env.unwrapped._env._local_view
    grid, offset = local_view._grid, local_view._offset
    return (int(grid[0]), int(grid[1])), (int(offset[0]), int(offset[1]))


class CrafterViewExpert(CrafterExpert):
    """Solves Crafter-Instruct tasks from the cells seen this episode (see the module docstring).

    Its memory is updated by ``observe(obs, info)``, which ``act`` calls first; observing the
    same state twice changes nothing. A caller that drives the env with other actions (DART
    noise, DAgger) keeps the memory current by calling ``act`` (or ``observe`` when it wants no
    label) on every state it visits. A skipped state is only a state the expert did not see:
    it then knows less, never more. ``seed`` is accepted for the common interface and unused.
    """

    name = "crafter_view_planner"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self._materials = np.zeros((0, 0), np.int16)  # material id per (x, y), UNKNOWN if unseen
        self._objects = np.zeros((0, 0), np.int16)  # object kind code per (x, y), 0 = none
        self._blocking = self._objects  # _objects without creatures outside the current view
        self._kind_codes: dict[str, int] = {}
        self._grid = (0, 0)
        self._offset = (0, 0)

    def reset(self, env: Any, obs: dict[str, Any], info: dict[str, Any]) -> None:
        super().reset(env, obs, info)
        self._grid, self._offset = view_rectangle(env)
        area = tuple(int(n) for n in self._env.world.area)
        self._materials = np.full(area, UNKNOWN, np.int16)
        self._objects = np.zeros(area, np.int16)
        self._kind_codes = {}
        self.observe(obs, info)

    def observe(self, obs: dict[str, Any], info: dict[str, Any]) -> None:
        """Copy the cells inside the current view from the world into the memory."""
        if self._env is None:
            raise RuntimeError("call reset(env, obs, info) before observe()")
        world, player = self._env.world, self._env.player
        width, height = self._materials.shape
        left, top = int(player.pos[0]) - self._offset[0], int(player.pos[1]) - self._offset[1]
        xs = slice(max(left, 0), min(left + self._grid[0], width))
        ys = slice(max(top, 0), min(top + self._grid[1], height))
        self._materials[xs, ys] = world._mat_map[xs, ys]
        object_ids = world._obj_map[xs, ys]
        codes = np.zeros(object_ids.shape, np.int16)
        for i, j in np.argwhere(object_ids):
            codes[i, j] = self._kind_code(object_kind(world._objects[object_ids[i, j]]))
        self._objects[xs, ys] = codes
        moving = np.isin(self._objects, [self._kind_code(kind) for kind in MOVING])
        moving[xs, ys] = False
        self._blocking = np.where(moving, 0, self._objects)

    def act(self, obs: dict[str, Any], info: dict[str, Any]) -> int:
        self.observe(obs, info)
        return super().act(obs, info)

    @property
    def seen(self) -> np.ndarray:
        """bool (x, y): True where the cell has been inside the view this episode."""
        return self._materials != UNKNOWN

    def _kind_code(self, kind: str) -> int:
        return self._kind_codes.setdefault(kind, len(self._kind_codes) + 1)

    # -- world queries, answered from the memory ------------------------------------------
    def _maps(self) -> tuple[np.ndarray, np.ndarray]:
        return self._materials, self._blocking

    def _table_nearby(self) -> bool:
        # The same 3 x 3 window crafter checks before crafting (World.nearby(pos, 1)).
        x, y = int(self._env.player.pos[0]), int(self._env.player.pos[1])
        window = self._materials[x - 1 : x + 2, y - 1 : y + 2]
        return bool(np.isin(window, self._material_ids(("table",))).any())

    def _table_known(self) -> bool:
        return bool(np.isin(self._materials, self._material_ids(("table",))).any())

    def _stations_nearby(self, stations: tuple[str, ...]) -> bool:
        x, y = int(self._env.player.pos[0]), int(self._env.player.pos[1])
        window = self._materials[max(x - 1, 0) : x + 2, max(y - 1, 0) : y + 2]
        return all(np.isin(window, self._material_ids((station,))).any() for station in stations)

    def _object_kind_at(self, cell: np.ndarray) -> str | None:
        x, y = int(cell[0]), int(cell[1])
        width, height = self._objects.shape
        if not (0 <= x < width and 0 <= y < height) or self._objects[x, y] == 0:
            return None
        code = int(self._objects[x, y])
        return next(kind for kind, value in self._kind_codes.items() if value == code)

    def _object_cells(self, kind: str) -> set[tuple[int, int]]:
        if kind not in self._kind_codes:
            return set()
        return {(int(x), int(y)) for x, y in np.argwhere(self._objects == self._kind_codes[kind])}

    def _explore(self) -> int:
        unknown = self._materials == UNKNOWN

        def is_unknown(cell: tuple[int, int]) -> bool:
            return bool(unknown[cell])

        # Tunnels (path) lead into dark caves where skeletons shoot: explore the surface first.
        action = self._plan(is_unknown, ACTION["noop"], explore=False, walkable=SURFACE)
        if action is None:
            action = self._plan(is_unknown, ACTION["noop"], explore=False)
        # Everything reachable is known and holds no target: wait (a creature may free the way).
        return ACTION["noop"] if action is None else action
