"""Imports go one way: envs and policies are leaves, then agent, then train.

The README's "Where things are" section states the rule and what each package holds.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = {"envs", "policies", "agent", "train"}
ALLOWED = {
    "envs": set(),
    "policies": set(),
    "agent": {"envs", "policies"},
    "train": {"envs", "policies", "agent"},
}
FORBIDDEN_THIRD_PARTY = {
    "envs": {"torch", "stable_baselines3"},
    "policies": {"gymnasium", "stable_baselines3"},
    "agent": {"stable_baselines3"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_import_direction(package: str) -> None:
    for path in sorted((REPO / package).rglob("*.py")):
        imported = imported_modules(path)
        wrong = (imported & OURS) - ALLOWED[package] - {package}
        assert not wrong, f"{path.relative_to(REPO)} imports {sorted(wrong)}"
        banned = imported & FORBIDDEN_THIRD_PARTY.get(package, set())
        assert not banned, f"{path.relative_to(REPO)} imports {sorted(banned)}"


def test_importing_envs_loads_no_torch() -> None:
    code = (
        "import sys, envs, envs.wrappers, envs.data.collect, envs.data.store; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
