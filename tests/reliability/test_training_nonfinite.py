"""Weights holding NaN or inf are never written and never loaded; a diverged run names a last
good checkpoint that really is good (or says there is none)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_config
from safetensors.torch import load_file, save_file

from policies import InstructionPolicy
from policies.persist import NonFiniteWeightsError

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")


def first_float_parameter(policy: InstructionPolicy) -> tuple[str, torch.nn.Parameter]:
    return next((name, p) for name, p in policy.named_parameters() if p.is_floating_point())


def test_non_finite_weights_are_not_written_and_the_old_checkpoint_survives(tmp_path: Path) -> None:
    policy = InstructionPolicy(make_tiny_config())
    policy.save_pretrained(tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    name, parameter = first_float_parameter(policy)
    with torch.no_grad():
        parameter.view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match=rf"NaN or inf values \(tensor '{re.escape(name)}'\)"):
        policy.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging directory left
    InstructionPolicy.from_pretrained(tmp_path / "ckpt")


def test_loading_non_finite_weights_names_the_file_and_the_tensor(tmp_path: Path) -> None:
    InstructionPolicy(make_tiny_config()).save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(str(weights))
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(
        NonFiniteWeightsError,
        match=rf"{re.escape(str(weights))}: tensor '{re.escape(name)}' holds NaN or inf",
    ):
        InstructionPolicy.from_pretrained(tmp_path / "ckpt")
