"""A scripted Crafter-Instruct expert that reads the world state and plans shortest paths.

Each task is a small chain of sub-goals (get wood -> place a table -> make a pickaxe -> mine
stone ...). A sub-goal is "face a cell that satisfies a predicate, then press an action"; one
breadth-first search over free cells finds the nearest way to face such a cell. Because a move
also turns the player, the search also accepts "step toward d and then face the cell beyond".
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from envs.crafter_instruct import ACTION_NAMES, CrafterInstructEnv
from envs.crafter_tasks import TASKS
from envs.errors import TaskError, WrongEnvError
from envs.experts.base import Expert
from envs.experts.crafter_tech import TECH, TechTreePlanner

ACTION = {name: index for index, name in enumerate(ACTION_NAMES)}
DIRECTIONS: tuple[tuple[int, int], ...] = ((-1, 0), (1, 0), (0, -1), (0, 1))
MOVE = {
    (-1, 0): ACTION["move_left"],
    (1, 0): ACTION["move_right"],
    (0, -1): ACTION["move_up"],
    (0, 1): ACTION["move_down"],
}
WALKABLE = ("grass", "sand", "path")
PLACE_WHERE = {
    "table": ("grass", "sand", "path"),
    "stone": ("grass", "sand", "path", "water", "lava"),
    "plant": ("grass",),
}


def object_kind(obj: Any) -> str:
    """What a planner calls an object: its class name, except that a ripe plant (drawn with its
    own texture) is a "RipePlant"."""
    kind = type(obj).__name__
    return "RipePlant" if kind == "Plant" and obj.ripe else kind


class CrafterExpert(TechTreePlanner, Expert):
    """Solves every Crafter-Instruct task from the true world state.

    Args:
        seed: seeds the exploration moves used when no target is reachable.
    """

    name = "crafter_planner"

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)
        self._env: CrafterInstructEnv | None = None
        self._task: str | None = None  # set by follow(): the task to label instead of the env's

    def reset(self, env: Any, obs: dict[str, Any], info: dict[str, Any]) -> None:
        base = env.unwrapped
        if not isinstance(base, CrafterInstructEnv):
            raise WrongEnvError(f"CrafterExpert needs a Crafter-Instruct env, got {type(base).__name__}")
        self._env = base
        self._task = None

    def follow(self, task: str | None) -> None:
        if task is not None and task not in TASKS:
            raise TaskError(f"unknown Crafter-Instruct task {task!r}; known tasks: {sorted(TASKS)}")
        self._task = task

    # -- world queries: the only reads of the world; a view-limited expert overrides them ---
    def _maps(self) -> tuple[np.ndarray, np.ndarray]:
        """Material ids (x, y) and object map (x, y), 0 = no object there."""
        world = self._env.world
        return world._mat_map, world._obj_map

    def _material_ids(self, names: tuple[str, ...]) -> list[int]:
        ids = self._env.world._mat_ids
        return [ids[name] for name in names if name in ids]

    def _table_nearby(self) -> bool:
        nearby, _ = self._env.world.nearby(self._env.player.pos, 1)
        return "table" in nearby

    def _table_known(self) -> bool:
        return self._env.world.count("table") > 0

    def _stations_nearby(self, stations: tuple[str, ...]) -> bool:
        nearby, _ = self._env.world.nearby(self._env.player.pos, 1)
        return all(station in nearby for station in stations)

    def _object_kind_at(self, cell: np.ndarray) -> str | None:
        """The kind (``object_kind``) of the object at ``cell`` (None: none or outside the world)."""
        _, obj = self._env.world[cell]
        return None if obj is None else object_kind(obj)

    def _object_cells(self, kind: str) -> set[tuple[int, int]]:
        objects = self._env.world._objects
        return {tuple(obj.pos) for obj in objects if obj is not None and object_kind(obj) == kind}

    def _explore(self) -> int:
        """A random move for when no target is reachable; a move into lava becomes a noop (the
        draw is kept, so the moves elsewhere are the same as without the check)."""
        action = int(self._rng.integers(ACTION["move_left"], ACTION["move_down"] + 1))
        direction = next(d for d, move in MOVE.items() if move == action)
        x, y = self._env.player.pos + np.array(direction)
        mat_map, _ = self._maps()
        width, height = mat_map.shape
        if 0 <= x < width and 0 <= y < height and mat_map[x, y] in self._material_ids(("lava",)):
            return ACTION["noop"]
        return action

    # -- the plan -------------------------------------------------------------------------
    def act(self, obs: dict[str, Any], info: dict[str, Any]) -> int:
        if self._env is None:
            raise RuntimeError("call reset(env, obs, info) before act()")
        player = self._env.player
        defend = self._face_adjacent_enemy()
        if defend is not None:
            return defend
        inventory = player.inventory
        task = self._task or self._env.task
        if task == "collect_wood":
            return self._interact_material(("tree",), ACTION["do"])
        if task == "collect_sapling":
            return self._interact_free(("grass",), ACTION["do"])
        if task == "collect_drink":
            return self._interact_material(("water",), ACTION["do"])
        if task == "eat_cow":
            return self._interact_object("Cow", ACTION["do"])
        if task == "place_table":
            return self._place_table(inventory)
        if task in ("make_wood_pickaxe", "make_wood_sword"):
            return self._make(task, inventory)
        if task == "place_plant":
            if inventory["sapling"] < 1:
                return self._interact_free(("grass",), ACTION["do"])
            return self._interact_free(PLACE_WHERE["plant"], ACTION["place_plant"])
        if task == "collect_stone":
            return self._collect_stone(inventory)
        if task == "place_stone":
            if inventory["stone"] < 1:
                return self._collect_stone(inventory)
            return self._interact_free(PLACE_WHERE["stone"], ACTION["place_stone"], blocked_ok=True)
        if task in TECH:
            return self._act_tech(task)
        raise TaskError(f"CrafterExpert has no plan for task {task!r}")

    def _place_table(self, inventory: dict[str, int]) -> int:
        if inventory["wood"] < 2:
            return self._interact_material(("tree",), ACTION["do"])
        return self._interact_free(PLACE_WHERE["table"], ACTION["place_table"])

    def _make(self, item: str, inventory: dict[str, int]) -> int:
        if self._table_nearby():
            if inventory["wood"] >= 1:
                return ACTION[item]
            return self._interact_material(("tree",), ACTION["do"])
        if inventory["wood"] >= 3:
            return self._interact_free(PLACE_WHERE["table"], ACTION["place_table"])
        if inventory["wood"] >= 1 and self._table_known():
            # Walk back to the table placed earlier rather than spending 2 wood on another.
            action = self._interact_material(("table",), ACTION["noop"], explore=False)
            if action is not None:
                return action
        return self._interact_material(("tree",), ACTION["do"])

    def _collect_stone(self, inventory: dict[str, int]) -> int:
        if inventory["wood_pickaxe"] < 1:
            return self._make("make_wood_pickaxe", inventory)
        return self._interact_material(("stone",), ACTION["do"])

    # -- sub-goals ------------------------------------------------------------------------
    def _face_adjacent_enemy(self) -> int | None:
        player = self._env.player
        for direction in DIRECTIONS:
            if self._object_kind_at(player.pos + np.array(direction)) in ("Zombie", "Skeleton"):
                if tuple(player.facing) == direction:
                    return ACTION["do"]
                return MOVE[direction]
        return None

    def _interact_material(self, names: tuple[str, ...], action: int, explore: bool = True) -> int | None:
        mat_map, _ = self._maps()
        target = np.isin(mat_map, self._material_ids(names))
        return self._plan(lambda cell: bool(target[cell]), action, explore)

    def _interact_free(self, names: tuple[str, ...], action: int, blocked_ok: bool = False) -> int:
        """Face a cell of one of ``names`` that holds no object (placement, sapling picking)."""
        mat_map, obj_map = self._maps()
        target = np.isin(mat_map, self._material_ids(names)) & (obj_map == 0)
        return self._plan(lambda cell: bool(target[cell]), action, True)

    def _interact_object(self, kind: str, action: int) -> int:
        cells = self._object_cells(kind)
        return self._plan(lambda cell: cell in cells, action, True)

    def _plan(
        self,
        is_target: Callable[[tuple[int, int]], bool],
        action: int,
        explore: bool,
        walkable: tuple[str, ...] = WALKABLE,
    ) -> int | None:
        """First action toward facing a target cell, or ``action`` when already facing one.

        Paths go over free cells of the ``walkable`` materials only.
        """
        player = self._env.player
        mat_map, obj_map = self._maps()
        free = np.isin(mat_map, self._material_ids(walkable)) & (obj_map == 0)
        width, height = free.shape
        start = (int(player.pos[0]), int(player.pos[1]))
        facing = (start[0] + int(player.facing[0]), start[1] + int(player.facing[1]))
        if 0 <= facing[0] < width and 0 <= facing[1] < height and is_target(facing):
            return action
        free_list = free.tolist()
        lava_list = np.isin(mat_map, self._material_ids(("lava",))).tolist()

        def inside(x: int, y: int) -> bool:
            return 0 <= x < width and 0 <= y < height

        first: dict[tuple[int, int], int] = {start: -1}
        queue = deque([start])
        while queue:
            cell = queue.popleft()
            for dx, dy in DIRECTIONS:
                nx, ny = cell[0] + dx, cell[1] + dy
                if not inside(nx, ny):
                    continue
                step = MOVE[(dx, dy)] if first[cell] == -1 else first[cell]
                if not free_list[nx][ny]:
                    # A blocked neighbour is faced by pressing the move: turn, then act. Never
                    # lava: the player walks onto lava (and dies) where it only turns elsewhere.
                    if is_target((nx, ny)) and not lava_list[nx][ny]:
                        return step
                    continue
                if (nx, ny) in first:
                    continue
                # After stepping onto a free cell the player faces the cell beyond it.
                bx, by = nx + dx, ny + dy
                if inside(bx, by) and is_target((bx, by)):
                    return step
                first[(nx, ny)] = step
                queue.append((nx, ny))
        if not explore:
            return None
        return self._explore()


class CrafterNightExpert(CrafterExpert):
    """``crafter_planner`` keeping night watch: sealed in its shelter it sits the whole night out,
    rested or not, until the rising light passes ``DAWN``, and leaves it for water or a cow only
    when thirst or hunger is about to hurt; on eat_plant it gathers the wall's stones before
    planting. Longer episodes, fewer deaths on the tasks that run into the first night
    (docs/tasks.md)."""

    name = "crafter_night_planner"
    night_watch = True
