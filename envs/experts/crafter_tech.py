"""The planner's plans for crafter's tech tree: tools, furnace, iron, diamonds, fights, plants
and sleep, each from a fresh world, surviving on the way.

A task is the list of things it needs made or placed (``TECH``), in the order crafter's recipes
allow, then its own last step. Every step the planner recomputes from the state alone:

1. survive: drink when thirsty, eat a cow when hungry, sleep when exhausted (after clearing the
   zombies nearby); an adjacent zombie or skeleton is fought before anything else;
2. gather: all the wood the rest of the plan needs first (trees grow on the surface), then the
   stone, coal and iron the next item needs, topped up to what the whole plan needs;
3. craft where the recipe's stations (table, furnace) are within reach, walking back to them
   when that is cheap, placing new ones when not and the inventory allows.

Routes come from ``crafter_routes.route``: they dig through rock the inventory's tools can mine
(iron and diamonds sit inside mountains), never enter lava or water, and keep clear of
skeletons unless hunting one. A plan whose target the world lacks (no reachable diamond) falls
back to exploring moves until the step limit ends the episode as a failure.

Length (about 570 lines): the whole tech tree's plans in one file, in the order crafter's
recipes allow; split per tool, following one task would cross files at every prerequisite.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import crafter
import numpy as np

from envs.crafter_instruct import ACTION_NAMES
from envs.errors import TaskError
from envs.experts.crafter_routes import BLOCKED, DIRECTIONS, FREE, MINABLE, route

ACTION = {name: index for index, name in enumerate(ACTION_NAMES)}
MOVE = {
    (-1, 0): ACTION["move_left"],
    (1, 0): ACTION["move_right"],
    (0, -1): ACTION["move_up"],
    (0, 1): ACTION["move_down"],
}
WALKABLE = tuple(crafter.constants.walkable)
COLLECT = crafter.constants.collect  # material -> tools required, items received
MAKE = crafter.constants.make  # tool -> materials used, stations nearby
PLACE = crafter.constants.place  # table/furnace/stone/plant -> materials used, where
MAX_ITEM = 9  # crafter clamps every inventory count to 9

# What each tech-tree task needs made or placed, in recipe order; the last entry of a make or
# place task is the task itself. Swords make fights shorter (wood: 2 damage a hit, 1 bare).
TECH: dict[str, tuple[str, ...]] = {
    "collect_coal": ("wood_pickaxe",),
    "collect_iron": ("wood_pickaxe", "wood_sword", "stone_pickaxe"),
    "collect_diamond": ("wood_pickaxe", "wood_sword", "stone_pickaxe", "furnace", "iron_pickaxe"),
    "place_furnace": ("wood_pickaxe", "furnace"),
    "make_stone_pickaxe": ("wood_pickaxe", "stone_pickaxe"),
    "make_stone_sword": ("wood_pickaxe", "stone_sword"),
    "make_iron_pickaxe": ("wood_pickaxe", "wood_sword", "stone_pickaxe", "furnace", "iron_pickaxe"),
    "make_iron_sword": ("wood_pickaxe", "wood_sword", "stone_pickaxe", "furnace", "iron_sword"),
    "defeat_zombie": (),
    "defeat_skeleton": ("wood_pickaxe", "wood_sword"),
    "eat_plant": ("wood_pickaxe", "wood_sword"),
    "wake_up": (),
}
# Stone walls around a growing plant: cows and zombies next to it trample it.
PLANT_WALL = 4
# Survival thresholds (crafter's stats run 0..9; at 0 health starts to drop).
DRINK_LOW, FOOD_LOW, ENERGY_LOW = 4, 4, 1
# A zombie this close (Manhattan) is fought before sleeping: a sleeper takes 7 damage a hit.
ZOMBIE_CLEAR = 6
ZOMBIE_MEET = 3
# Route cost beyond which placing a new table (2 wood) beats walking back to the old one.
SITE_NEAR = 12
# A skeleton shoots along its row or column at a player within 5 cells (Manhattan); one more
# cell of margin, since skeletons move. Routes pay FIRE_COST to cross such a cell; a player
# standing in one attacks the skeleton when it is that close by route, else steps out.
FIRE_RANGE, FIRE_COST = 6, 10
ARROW_FLIES = ("grass", "sand", "path", "water", "lava")
# Night (crafter's daylight below this): zombies crowd the grass; the planner sleeps it out in
# a shelter when it has a pickaxe and a stone to build one.
NIGHT = 0.35
# Keeping night watch (``night_watch``), it stays sealed in with full energy too, until the
# rising light passes DAWN (crafter keeps a zombie a chunk of grass until 0.83, two until 0.5),
# and leaves for water or a cow only at NIGHT_LOW.
DAWN = 0.6
NIGHT_LOW = 1
# Extra route cost through a growing plant's walls (stone the routes could otherwise mine).
WALL_COST = 50


class TechTreePlanner:
    """The tech-tree plans, mixed into ``CrafterExpert``; they read the world only through its
    queries (``_maps``, ``_material_ids``, ``_object_cells``, ``_stations_nearby``,
    ``_explore``), so the view-limited expert runs them on its memory."""

    _env: Any
    # Off: the planner that collected the shipped demonstrations, which leaves its shelter once
    # rested; on: ``crafter_night_planner``, which sits the night out (docs/tasks.md).
    night_watch: bool = False

    # -- entry ------------------------------------------------------------------------------
    def _act_tech(self, task: str) -> int:
        player = self._env.player
        if player.sleeping:
            return ACTION["sleep"]  # crafter keeps a sleeper asleep whatever it presses
        inventory = player.inventory
        if task != "defeat_skeleton":
            action = self._dodge_arrows()
            if action is not None:
                return action
        # A zombie this close reaches the player anyway: meet it facing it, sword first.
        near = self._zombies_within(ZOMBIE_MEET)
        if near.any() and not self._sealed_here():
            action = self._go(near, ACTION["do"], tunnel=False)
            if action is not None:
                return action
        action = self._survive(task, inventory)
        if action is not None:
            return action
        if task == "wake_up":
            return self._sleep() if inventory["energy"] < MAX_ITEM else ACTION["noop"]
        if task == "eat_plant":
            return self._eat_plant(inventory)
        action = self._advance(task, inventory)
        if action is not None:
            return action
        if task.startswith("collect_"):
            return self._collect(task.removeprefix("collect_"))
        if task == "defeat_zombie":
            return self._attack("Zombie")
        if task == "defeat_skeleton":
            return self._attack("Skeleton")
        raise TaskError(f"CrafterExpert has no plan for task {task!r}")

    # -- survival ---------------------------------------------------------------------------
    def _survive(self, task: str, inventory: dict[str, int]) -> int | None:
        water = self._material_goal(("water",))
        if self.night_watch:
            # It stays in its shelter until thirst or hunger is about to hurt (water and cows
            # are out on the grass, where the zombies are).
            night = self._night()
            drink_low, food_low = (NIGHT_LOW, NIGHT_LOW) if night else (DRINK_LOW, FOOD_LOW)
        else:
            night = self._daylight() < NIGHT and inventory["energy"] < MAX_ITEM
            drink_low, food_low = DRINK_LOW, FOOD_LOW
        # Once at the water, drink up to full rather than walking back at the threshold.
        if inventory["drink"] <= drink_low or (inventory["drink"] < MAX_ITEM and self._facing(water)):
            action = self._go(water, ACTION["do"])
            if action is not None:
                return action
        if inventory["food"] <= food_low:
            action = self._go(self._object_goal("Cow"), ACTION["do"])
            if action is not None:
                return action
        if task == "wake_up":
            # Told to sleep mid-game with a pickaxe (a plan's night rule), it seals itself in
            # first, as it does at night on the other tasks: a sleeper takes 7 damage a zombie
            # hit. From a fresh world (the task's own episodes) it holds no pickaxe and sleeps
            # where it stands.
            if inventory["wood_pickaxe"] and inventory["energy"] < MAX_ITEM:
                return self._shelter()
            return None
        tired = inventory["energy"] <= ENERGY_LOW
        if (tired or night) and inventory["wood_pickaxe"]:
            action = self._shelter()
            if action is not None:
                return action
        if tired:
            return self._sleep()
        return None

    def _shelter(self) -> int | None:
        """Dig (or walk) into a dead end two cells deep, seal its mouth with a stone, sleep.

        The pocket is a line E (mouth), B, A in one direction d whose other neighbours are all
        solid (nothing walks there). Walk to E, enter B (mining it if needed), mine A, step into
        A, step back to B (which turns the player toward E: the only way to face a free cell
        is to move toward it from the far side), place a stone on E.
        """
        cells = self._cells()
        x, y = (int(v) for v in self._env.player.pos)
        cells[x, y] = FREE  # the player's own cell
        if self._sealed(cells, (x, y)):
            return ACTION["sleep"]
        facing = tuple(int(v) for v in self._env.player.facing)
        pockets = self._pockets(cells)
        for d, (mouths, _) in pockets.items():
            bx, by = x - d[0], y - d[1]  # the player at B? then E is behind it
            if self._in(bx, by) and mouths[bx, by] and cells[x + d[0], y + d[1]] in (FREE, MINABLE):
                if facing == (-d[0], -d[1]):
                    return ACTION["place_stone"]
                if cells[x + d[0], y + d[1]] == MINABLE:
                    return ACTION["do"] if facing == d else MOVE[d]
                return MOVE[d]
            ex, ey = x - 2 * d[0], y - 2 * d[1]  # the player at A
            if self._in(ex, ey) and mouths[ex, ey] and cells[x - d[0], y - d[1]] == FREE:
                return MOVE[(-d[0], -d[1])]
        for d, (mouths, _) in pockets.items():
            if mouths[x, y]:
                if cells[x + d[0], y + d[1]] == MINABLE and facing == d:
                    return ACTION["do"]
                return MOVE[d]
        goal = np.zeros(cells.shape, bool)
        for mouths, _ in pockets.values():
            goal |= mouths
        return self._go(goal, ACTION["noop"], stand=True)

    def _pockets(self, cells: np.ndarray) -> dict[tuple[int, int], tuple[np.ndarray, None]]:
        """Per direction d: bool (x, y), True at a mouth E whose E+d, E+2d make a pocket."""
        mat_map, obj_map = self._maps()
        width, height = cells.shape
        # Solid: no creature walks there and no arrow flies through (outside the world too).
        solid = np.ones((width + 6, height + 6), bool)
        solid[3:-3, 3:-3] = ~np.isin(mat_map, self._material_ids(ARROW_FLIES))
        enter = np.zeros((width + 6, height + 6), bool)
        enter[3:-3, 3:-3] = np.isin(cells, (FREE, MINABLE))
        mouth = np.zeros((width + 6, height + 6), bool)
        mouth[3:-3, 3:-3] = (cells == FREE) & np.isin(
            mat_map, self._material_ids(tuple(PLACE["stone"]["where"]))
        )

        def at(grid: np.ndarray, dx: int, dy: int) -> np.ndarray:
            return grid[3 + dx : 3 + dx + width, 3 + dy : 3 + dy + height]

        if self._env.player.inventory["stone"] < 1:
            # No stone for the mouth: B must be stone, mined on the way in.
            enter_b = np.zeros_like(enter)
            enter_b[3:-3, 3:-3] = np.isin(mat_map, self._material_ids(("stone",))) & (obj_map == 0)
        else:
            enter_b = enter
        pockets = {}
        for d in DIRECTIONS:
            p = (d[1], d[0])  # perpendicular
            ok = at(mouth, 0, 0) & at(enter_b, *d) & at(enter, 2 * d[0], 2 * d[1])
            for k in (1, 2):
                ok &= at(solid, k * d[0] + p[0], k * d[1] + p[1]) & at(
                    solid, k * d[0] - p[0], k * d[1] - p[1]
                )
            ok &= at(solid, 3 * d[0], 3 * d[1])
            pockets[d] = (ok, None)
        return pockets

    def _sealed(self, cells: np.ndarray, start: tuple[int, int]) -> bool:
        """The player's walkable surroundings are at most 2 cells and hold no creature."""
        mat_map, obj_map = self._maps()
        walk = np.isin(mat_map, self._material_ids(ARROW_FLIES)).tolist()
        objects = obj_map.tolist()
        seen, stack = {start}, [start]
        while stack:
            x, y = stack.pop()
            for dx, dy in DIRECTIONS:
                nx, ny = x + dx, y + dy
                if not self._in(nx, ny) or (nx, ny) in seen or not walk[nx][ny]:
                    continue
                if objects[nx][ny] or len(seen) >= 2:
                    return False
                seen.add((nx, ny))
                stack.append((nx, ny))
        return True

    def _sealed_here(self) -> bool:
        x, y = (int(v) for v in self._env.player.pos)
        return self._sealed(self._cells(tunnel=False), (x, y))

    def _in(self, x: int, y: int) -> bool:
        width, height = self._maps()[0].shape
        return 0 <= x < width and 0 <= y < height

    def _daylight(self) -> float:
        return float(self._env.world.daylight)

    def _night(self) -> bool:
        """Dark enough for zombies to crowd the grass: below NIGHT as the light falls, below
        DAWN as it rises (they stay until the light is high)."""
        return self._daylight() < (DAWN if self._env.dawn else NIGHT)

    def _dodge_arrows(self) -> int | None:
        """In a skeleton's line of fire: fight it when it is close, else step out of the line."""
        fire = self._fire()
        x, y = (int(v) for v in self._env.player.pos)
        if not fire[x, y]:
            return None
        action = self._go(self._object_goal("Skeleton"), ACTION["do"], max_cost=FIRE_COST, avoid_fire=False)
        if action is not None:
            return action
        return self._go(~fire & (self._cells(tunnel=False) == FREE), ACTION["noop"], stand=True)

    def _fire(self) -> np.ndarray:
        """bool (x, y): cells a skeleton's arrow can reach (its row and column, up to the first
        cell an arrow cannot fly through, FIRE_RANGE long)."""
        mat_map, _ = self._maps()
        flies = np.isin(mat_map, self._material_ids(ARROW_FLIES)).tolist()
        width, height = mat_map.shape
        fire = np.zeros((width, height), bool)
        for sx, sy in self._object_cells("Skeleton"):
            for dx, dy in DIRECTIONS:
                for distance in range(1, FIRE_RANGE + 1):
                    x, y = sx + dx * distance, sy + dy * distance
                    if not (0 <= x < width and 0 <= y < height) or not flies[x][y]:
                        break
                    fire[x, y] = True
        return fire

    def _sleep(self) -> int:
        near = self._zombies_within(ZOMBIE_CLEAR)
        if near.any():
            action = self._go(near, ACTION["do"], tunnel=False)
            if action is not None:
                return action
        return ACTION["sleep"]

    # -- the tech tree ----------------------------------------------------------------------
    def _bill(self, task: str, inventory: dict[str, int]) -> Counter:
        """Materials the rest of ``task``'s plan uses (what is missing, not what is held)."""
        bill: Counter = Counter()
        missing = self._missing(task, inventory)
        for item in missing:
            bill.update(PLACE["furnace"]["uses"] if item == "furnace" else MAKE[item]["uses"])
        if any(item in MAKE for item in missing) and not self._known("table"):
            bill.update(PLACE["table"]["uses"])
        if task == "eat_plant" and not self._object_cells("Plant") | self._object_cells("RipePlant"):
            bill["stone"] += PLANT_WALL
        return Counter({name: min(count, MAX_ITEM) for name, count in bill.items()})

    def _has(self, item: str, inventory: dict[str, int]) -> bool:
        return self._known(item) if item == "furnace" else inventory[item] > 0

    def _missing(self, task: str, inventory: dict[str, int]) -> list[str]:
        """What ``task`` still needs made or placed, in recipe order. A make or place task's own
        item (its last) is always on the list: told mid-plan to make a pickaxe it already holds,
        or to place a furnace when one stands elsewhere, the planner makes another, which is
        what unlocks the achievement again."""
        items = TECH[task]
        own = items[-1] if items and task.startswith(("make_", "place_")) else None
        return [item for item in items if item == own or not self._has(item, inventory)]

    def _advance(self, task: str, inventory: dict[str, int]) -> int | None:
        """The next action toward the first item ``task`` still needs (None: it has them all)."""
        bill = self._bill(task, inventory)
        # Wood first and all of it: trees grow on the surface, the rest is in the mountains.
        if inventory["wood"] < bill["wood"]:
            return self._collect("tree")
        item = next(iter(self._missing(task, inventory)), None)
        if item is None:
            return None
        uses = PLACE["furnace"]["uses"] if item == "furnace" else MAKE[item]["uses"]
        for material, amount in uses.items():
            if inventory[material] < amount:
                return self._collect("tree" if material == "wood" else material)
        # Mined materials are topped up to the whole plan's need while the mine is near.
        for material in uses:
            if material != "wood" and inventory[material] < bill[material]:
                return self._collect(material)
        if item == "furnace":
            return self._place_furnace(task)
        return self._craft(item, inventory, bill)

    def _craft(self, item: str, inventory: dict[str, int], bill: Counter) -> int:
        stations = tuple(MAKE[item]["nearby"])
        if self._stations_nearby(stations):
            return ACTION[f"make_{item}"]
        site = self._site_goal(stations)
        action = self._go(site, ACTION["noop"], stand=True, max_cost=SITE_NEAR)
        if action is not None:
            return action
        spare_wood = inventory["wood"] - bill["wood"]
        if "table" in stations and spare_wood >= PLACE["table"]["uses"]["wood"]:
            near_furnace = self._near(self._material_goal(("furnace",)))
            goal = self._placeable("table") & (near_furnace if "furnace" in stations else True)
            action = self._go(goal, ACTION["place_table"])
            if action is not None:
                return action
        action = self._go(site, ACTION["noop"], stand=True)
        if action is not None:
            return action
        # No spot reaches every station (the furnace stands away from the table, or an arrow
        # broke one): build the missing one beside the other, gathering for it first.
        if "furnace" in stations and self._known("table"):
            spare_stone = inventory["stone"] - bill["stone"]
            if spare_stone >= PLACE["furnace"]["uses"]["stone"]:
                action = self._go(
                    self._placeable("furnace") & self._near(self._material_goal(("table",))),
                    ACTION["place_furnace"],
                )
                if action is not None:
                    return action
            else:
                return self._collect("stone")
        if "table" in stations and spare_wood < PLACE["table"]["uses"]["wood"]:
            return self._collect("tree")
        return self._explore()

    def _place_furnace(self, task: str) -> int:
        goal = self._placeable("furnace")
        if task != "place_furnace":
            # Beside a table, so that one spot reaches both when crafting iron tools.
            action = self._go(goal & self._near(self._material_goal(("table",))), ACTION["place_furnace"])
            if action is not None:
                return action
        return self._or_explore(self._go(goal, ACTION["place_furnace"]))

    def _collect(self, material: str) -> int:
        # Never the walls around a growing plant.
        goal = self._material_goal((material,)) & ~self._near(self._object_goal("Plant"), diagonal=False)
        return self._or_explore(self._go(goal, ACTION["do"]))

    def _attack(self, kind: str) -> int:
        return self._or_explore(self._go(self._object_goal(kind), ACTION["do"], avoid_fire=False))

    # -- eat_plant --------------------------------------------------------------------------
    def _eat_plant(self, inventory: dict[str, int]) -> int:
        ripe = self._object_goal("RipePlant")
        if ripe.any():
            # Dig through the wall and eat.
            return self._or_explore(self._go(ripe, ACTION["do"]))
        growing = self._object_goal("Plant")
        if not growing.any():
            action = self._advance("eat_plant", inventory)
            if action is not None:
                return action
            if self.night_watch and inventory["stone"] < PLANT_WALL:
                # All the wall's stone before planting: fetching it a stone at a time leaves
                # the sapling open for longer and keeps the player out on the grass.
                return self._collect("stone")
            if inventory["sapling"] < 1:
                return self._or_explore(self._go(self._placeable("plant"), ACTION["do"]))
            return self._or_explore(self._go(self._placeable("plant"), ACTION["place_plant"]))
        walls = self._near(growing, diagonal=False) & ~growing
        open_cells = walls & (self._cells(tunnel=False) == FREE)
        if open_cells.any():
            if inventory["stone"] < 1:
                return self._collect("stone")
            action = self._go(open_cells, ACTION["place_stone"])
            if action is not None:
                return action
        x, y = (int(v) for v in self._env.player.pos)
        if walls[x, y]:
            # The player stands in the last gap: step out so that it can be walled.
            cells = self._cells(tunnel=False)
            for direction in DIRECTIONS:
                nx, ny = x + direction[0], y + direction[1]
                if 0 <= nx < cells.shape[0] and 0 <= ny < cells.shape[1] and cells[nx, ny] == FREE:
                    return MOVE[direction]
        # Wait within reach: crafter grows only the plants near the player.
        return self._or_noop(self._go(self._near(growing, radius=3), ACTION["noop"], stand=True))

    # -- goals ------------------------------------------------------------------------------
    def _material_goal(self, names: tuple[str, ...]) -> np.ndarray:
        mat_map, _ = self._maps()
        return np.isin(mat_map, self._material_ids(names))

    def _object_goal(self, kind: str) -> np.ndarray:
        mat_map, _ = self._maps()
        goal = np.zeros(mat_map.shape, bool)
        for cell in self._object_cells(kind):
            goal[cell] = True
        return goal

    def _placeable(self, name: str) -> np.ndarray:
        mat_map, obj_map = self._maps()
        return np.isin(mat_map, self._material_ids(tuple(PLACE[name]["where"]))) & (obj_map == 0)

    def _known(self, material: str) -> bool:
        return bool(self._material_goal((material,)).any())

    def _site_goal(self, stations: tuple[str, ...]) -> np.ndarray:
        """Cells whose 3 x 3 window (crafter's ``nearby`` for crafting) holds every station."""
        site = np.ones(self._maps()[0].shape, bool)
        for station in stations:
            site &= self._near(self._material_goal((station,)))
        return site

    @staticmethod
    def _near(goal: np.ndarray, radius: int = 1, diagonal: bool = True) -> np.ndarray:
        """Cells within ``radius`` of a goal cell (Chebyshev, or Manhattan without diagonals)."""
        near = goal.copy()
        width, height = goal.shape
        for dx in range(-radius, radius + 1):
            for dy in range(-radius, radius + 1):
                if (dx or dy) and (diagonal or abs(dx) + abs(dy) <= radius):
                    # near[x + dx, y + dy] |= goal[x, y], clipped to the world.
                    near[max(dx, 0) : width + min(dx, 0), max(dy, 0) : height + min(dy, 0)] |= goal[
                        max(-dx, 0) : width + min(-dx, 0), max(-dy, 0) : height + min(-dy, 0)
                    ]
        return near

    def _zombies_within(self, distance: int) -> np.ndarray:
        goal = self._object_goal("Zombie")
        x, y = (int(v) for v in self._env.player.pos)
        xs, ys = np.indices(goal.shape)
        return goal & (np.abs(xs - x) + np.abs(ys - y) <= distance)

    def _facing(self, goal: np.ndarray) -> bool:
        player = self._env.player
        x, y = int(player.pos[0] + player.facing[0]), int(player.pos[1] + player.facing[1])
        return 0 <= x < goal.shape[0] and 0 <= y < goal.shape[1] and bool(goal[x, y])

    # -- routes -----------------------------------------------------------------------------
    def _cells(self, tunnel: bool = True) -> np.ndarray:
        """BLOCKED / FREE / MINABLE per cell for the current inventory."""
        mat_map, obj_map = self._maps()
        empty = obj_map == 0
        free = np.isin(mat_map, self._material_ids(WALKABLE)) & empty
        cells = np.where(free, FREE, BLOCKED)
        if tunnel:
            inventory = self._env.player.inventory
            minable = [
                name
                for name, rule in COLLECT.items()
                if rule["leaves"] in WALKABLE
                and name not in WALKABLE
                and all(inventory[tool] >= amount for tool, amount in rule["require"].items())
            ]
            cells = np.where(np.isin(mat_map, self._material_ids(tuple(minable))) & empty, MINABLE, cells)
        return cells

    def _danger(self, avoid_fire: bool) -> np.ndarray | None:
        extra = np.zeros(self._maps()[0].shape, np.int64)
        if avoid_fire:
            extra += FIRE_COST * self._fire()
        plants = self._object_goal("Plant")
        if plants.any():
            extra += WALL_COST * self._near(plants, diagonal=False)
        return extra if extra.any() else None

    def _go(
        self,
        goal: np.ndarray,
        action: int,
        *,
        stand: bool = False,
        tunnel: bool = True,
        max_cost: int | None = None,
        avoid_fire: bool = True,
    ) -> int | None:
        """The first action of the cheapest route to face (or stand on) a goal cell, then
        ``action`` there; None when no goal is reachable."""
        if not goal.any():
            return None
        player = self._env.player
        start = (int(player.pos[0]), int(player.pos[1]))
        facing = (int(player.facing[0]), int(player.facing[1]))
        cells = self._cells(tunnel)
        found = route(
            cells,
            goal,
            start,
            facing,
            stand=stand,
            extra_cost=self._danger(avoid_fire),
            max_cost=max_cost,
        )
        if found is None:
            return None
        if found.direction is None:
            return action
        if found.arrived:
            return action if facing == found.direction else MOVE[found.direction]
        nx, ny = start[0] + found.direction[0], start[1] + found.direction[1]
        if cells[nx, ny] == MINABLE and facing == found.direction:
            return ACTION["do"]
        return MOVE[found.direction]

    def _or_explore(self, action: int | None) -> int:
        return self._explore() if action is None else action

    @staticmethod
    def _or_noop(action: int | None) -> int:
        return ACTION["noop"] if action is None else action

    # Provided by the host expert.
    def _maps(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _material_ids(self, names: tuple[str, ...]) -> list[int]:
        raise NotImplementedError

    def _object_cells(self, kind: str) -> set[tuple[int, int]]:
        raise NotImplementedError

    def _stations_nearby(self, stations: tuple[str, ...]) -> bool:
        raise NotImplementedError

    def _explore(self) -> int:
        raise NotImplementedError


__all__ = ["BLOCKED", "TECH", "TechTreePlanner"]
