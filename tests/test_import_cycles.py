"""No import cycles between the project's own modules (one home per concern).

The graph comes from the source with ``ast``: every ``import`` counts, at module level or inside a
function. ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to the
module that defines ``name`` when ``pkg/__init__.py`` only re-exports it, else to ``pkg``. Importing
``pkg.sub`` also runs ``pkg/__init__.py``, but Python has ``pkg`` half-initialized in
``sys.modules`` by then; that implicit edge is left out, so a package's re-exports do not make
every submodule a cycle with its own ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "envs", "policies", "train")
# A cycle too large to break in passing: the modules of the cycle -> why it is still here.
ALLOWED_CYCLES: dict[frozenset[str], str] = {}


def module_files() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _reexports(modules: dict[str, Path]) -> dict[str, dict[str, str]]:
    """package -> {name: the module its ``__init__`` imports that name from}."""
    out: dict[str, dict[str, str]] = {}
    for module, path in modules.items():
        if path.name != "__init__.py":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                source = _absolute(node, module, True)
                for alias in node.names:
                    out.setdefault(module, {})[alias.asname or alias.name] = (
                        f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                    )
    return out


def _defining_module(package: str, name: str, modules: dict[str, Path], reexports: dict) -> str:
    seen = set()
    while name in reexports.get(package, {}) and package not in seen:
        seen.add(package)
        source = reexports[package][name]
        if source not in modules:
            break
        if source == f"{package}.{name}" or source not in reexports:
            return source
        package = source
    return package


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    reexports = _reexports(modules)
    graph: dict[str, set[str]] = {module: set() for module in modules}

    def known(name: str) -> str | None:  # the longest prefix of a dotted name that is one of ours
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in modules:
                return ".".join(parts[:end])
        return None

    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [known(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(node, module, path.name == "__init__.py")
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules:
                        targets.append(f"{source}.{alias.name}")
                    elif source in modules:
                        targets.append(_defining_module(source, alias.name, modules, reexports))
                    else:
                        targets.append(known(source))
            graph[module].update(t for t in targets if t and t != module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, first repeated last) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan; the graph has a few hundred nodes at most
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    found = []
    for component in components:
        start = min(component)
        path, parents, frontier = None, {start: None}, [start]
        while frontier and path is None:  # shortest way back to start inside the component
            following = []
            for node in frontier:
                for nxt in sorted(graph[node] & component):
                    if nxt == start:
                        chain = [node]
                        while chain[-1] != start:
                            chain.append(parents[chain[-1]])
                        path = [*reversed(chain), start]
                        break
                    if nxt not in parents:
                        parents[nxt] = node
                        following.append(nxt)
                if path:
                    break
            frontier = following
        found.append(path or sorted(component))
    return sorted(found)


def test_the_graph_sees_the_imports_it_should() -> None:
    graph = import_graph()
    assert "policies.config" in graph["policies.fusion.base"]  # module level
    assert "policies.fusion.cross_attention" in graph["policies.fusion"]  # a package re-export
    assert {"envs.data.video"} <= graph["envs.data.vpt"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b", "c"}, "b": {"a"}, "c": {"d"}, "d": {"a"}}) == [["a", "b", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    found = [cycle for cycle in cycles(import_graph()) if frozenset(cycle) not in ALLOWED_CYCLES]
    assert not found, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in found)


def test_a_fusion_is_named_once_beside_its_class() -> None:
    """Every fusion class under policies/fusion/ registers itself, the config checks names against
    that one registry, and the config still never imports the fusions."""
    from policies import config
    from policies.fusion import FUSIONS, Fusion

    def leaves(cls: type) -> set[type]:
        below = cls.__subclasses__()
        return set().union(*map(leaves, below)) if below else {cls}

    fusion_classes = {cls for cls in leaves(Fusion) if cls.__module__.startswith("policies.fusion.")}
    assert FUSIONS is config.FUSIONS and set(FUSIONS.values()) == fusion_classes
    assert "policies.fusion" not in import_graph()["policies.config"]


def test_registering_a_fusion_is_the_one_edit_the_config_needs() -> None:
    from policies import FusionConfig
    from policies.config import FUSIONS, register_fusion
    from policies.errors import ConfigError

    with pytest.raises(ConfigError, match="fusion_type 'gmu' is registered twice: GMUFusion and Extra"):
        register_fusion("gmu")(type("Extra", (), {}))
    with pytest.raises(ConfigError, match=r"fusion_type must be one of .*, got 'extra'"):
        FusionConfig(fusion_type="extra")
    register_fusion("extra")(type("Extra", (), {}))
    try:
        assert FusionConfig(fusion_type="extra").fusion_type == "extra"
    finally:
        del FUSIONS["extra"]
