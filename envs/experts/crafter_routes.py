"""Shortest routes on crafter's grid that may dig through rock: the planner's search.

A route ends either facing a goal cell (to press an action on it: mine, attack, place) or
standing on one. Cells are free (walk in: one step), minable (face, mine, walk in: three) or
blocked; an optional extra cost per cell keeps routes away from danger. Lava is blocked like
water: the caller never marks it free or minable, so no route enters it.

Facing matters because crafter turns the player with its move actions: moving toward a blocked
cell only turns, so a blocked goal can be faced from any neighbour, but a free goal (a place to
put something) can only be faced by arriving at its neighbour while moving toward it.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

DIRECTIONS: tuple[tuple[int, int], ...] = ((-1, 0), (1, 0), (0, -1), (0, 1))
BLOCKED, FREE, MINABLE = 0, 1, 2
# Turn to face the cell, mine it, step in.
MINE_COST = 3


@dataclass(frozen=True)
class Route:
    """The first move of a route and its cost.

    ``direction`` is None when the player is already where the route ends (facing the goal, or
    standing on it); otherwise it is the direction of the first cell of the route, which the
    caller walks into if it is free or mines (turning first) if it is minable. ``arrived``: the
    player stands next to the goal and only has to turn toward ``direction``.
    """

    direction: tuple[int, int] | None
    arrived: bool
    cost: int


def route(
    cells: np.ndarray,
    goal: np.ndarray,
    start: tuple[int, int],
    facing: tuple[int, int],
    *,
    stand: bool = False,
    extra_cost: np.ndarray | None = None,
    max_cost: int | None = None,
) -> Route | None:
    """The cheapest route from ``start`` to face (or, ``stand=True``, stand on) a ``goal`` cell.

    Args:
        cells: int (x, y): BLOCKED, FREE or MINABLE; the player's own cell may be anything.
        goal: bool (x, y): the cells to face (or stand on).
        start, facing: the player's cell and facing direction.
        extra_cost: int (x, y) added on entering a cell (danger), or None.
        max_cost: give up beyond this cost (None: search everything reachable).

    Returns None when no goal is reachable.
    """
    width, height = cells.shape
    kind = cells.tolist()
    target = goal.tolist()
    extra = extra_cost.tolist() if extra_cost is not None else None
    if stand and target[start[0]][start[1]]:
        return Route(None, True, 0)
    best = {start: 0}
    first: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
    # Entries: (cost, tie, cell, first move of a route that ends facing a free goal or None).
    # Ties are broken by insertion order: the same state gives the same route.
    heap: list[tuple[int, int, tuple[int, int], tuple[int, int] | None]] = [(0, 0, start, None)]
    counter = 1
    while heap:
        cost, _, cell, done = heapq.heappop(heap)
        if done is not None:
            return Route(done, False, cost)
        if cost > best[cell]:
            continue
        if max_cost is not None and cost > max_cost:
            return None
        x, y = cell
        if stand and target[x][y]:
            return Route(first[cell], False, cost)
        for dx, dy in DIRECTIONS:
            nx, ny = x + dx, y + dy
            if not (0 <= nx < width and 0 <= ny < height):
                continue
            step = kind[nx][ny]
            if not stand and target[nx][ny] and step != FREE:
                # A blocked goal is faced from any neighbour (a move toward it only turns).
                return Route((dx, dy), True, cost) if cell == start else Route(first[cell], False, cost)
            if not stand and target[nx][ny] and cell == start and facing == (dx, dy):
                return Route((dx, dy), True, cost)
            if step == BLOCKED:
                continue
            new = cost + (1 if step == FREE else MINE_COST) + (extra[nx][ny] if extra is not None else 0)
            move = (dx, dy) if cell == start else first[cell]
            bx, by = nx + dx, ny + dy
            beyond = 0 <= bx < width and 0 <= by < height and target[bx][by] and kind[bx][by] == FREE
            if not stand and step == FREE and beyond:
                # Walking into (nx, ny) faces the free goal beyond it.
                heapq.heappush(heap, (new, counter, (nx, ny), move))
                counter += 1
            if new < best.get((nx, ny), new + 1):
                best[(nx, ny)] = new
                first[(nx, ny)] = move
                heapq.heappush(heap, (new, counter, (nx, ny), None))
                counter += 1
    return None
