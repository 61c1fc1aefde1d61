"""Checkpoints written before ``vision.encoder``, ``vision.position_embedding`` and
``vision.token_pooling`` existed are read with the values they were built with everywhere a
checkpoint's config is read: loading, the RL init check and the BC resume check."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from gymnasium import spaces

from policies import PolicyConfig
from train.checkpoint import NOT_RECORDED, settings_changed_on_resume
from train.config import RunConfig
from train.rl.run import check_init_matches_env

# The first recipe's policy as its checkpoints spelled it: no encoder, positions or pooling keys.
FIRST_RECIPE = {
    "action_space": {"type": "Discrete", "sizes": [17]},
    "vision": {"image_size": [64, 64], "channels": [16, 32, 32], "frame_tokens": 16},
}


def legacy_checkpoint(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"policy": FIRST_RECIPE}))
    (root / "run.json").write_text(json.dumps({"policy": FIRST_RECIPE, "train": {}}))
    return root


def test_the_rl_init_check_reads_a_legacy_checkpoint_as_the_impala_model_it_was(tmp_path: Path) -> None:
    checkpoint = legacy_checkpoint(tmp_path / "old")
    image = spaces.Dict({"image": spaces.Box(0, 255, (3, 64, 64))})  # channels first, as SB3 sees it
    env = SimpleNamespace(action_space=spaces.Discrete(17), observation_space=image)
    check_init_matches_env(str(checkpoint), env, "instructcraft/Crafter-Instruct-v0", "--init")  # no error
    other = SimpleNamespace(action_space=spaces.Discrete(7), observation_space=image)
    with pytest.raises(ValueError, match="acts in"):
        check_init_matches_env(str(checkpoint), other, "x", "--init")


def test_bc_resume_names_the_pooling_a_legacy_run_was_built_with(tmp_path: Path) -> None:
    """Resuming a first-recipe run with today's cell encoder is an architecture change, named
    field by field (not a bare size mismatch when the weights load)."""
    checkpoint = legacy_checkpoint(tmp_path / "old")
    today = RunConfig(policy=PolicyConfig.from_dict({"action_space": FIRST_RECIPE["action_space"]}))
    with pytest.raises(
        ValueError, match=r"policy.vision.encoder: 'impala' -> 'cells'.*token_pooling: 'average' -> 'merge'"
    ):
        settings_changed_on_resume(checkpoint, today)
    same = RunConfig(
        policy=PolicyConfig.from_dict(
            {
                **FIRST_RECIPE,
                "vision": {**FIRST_RECIPE["vision"], "encoder": "impala", "position_embedding": False},
            }
        )
    )
    assert not any(key.startswith("policy.vision") for key in settings_changed_on_resume(checkpoint, same))


def test_a_training_setting_the_record_predates_is_named_on_resume(tmp_path: Path) -> None:
    """Protects: a run recorded before ``train.amp_cpu`` existed trained with bf16 autocast on a
    native-bf16 CPU (``train.amp`` alone); resumed today it trains in fp32, and the resume note
    names the setting as not recorded rather than staying silent. A full record lists nothing."""
    today = RunConfig()
    recorded = today.to_dict()
    old_train = {key: value for key, value in recorded["train"].items() if key != "amp_cpu"}
    root = tmp_path / "run"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"policy": recorded["policy"]}))
    (root / "run.json").write_text(json.dumps({**recorded, "train": old_train}, default=list))
    changed = settings_changed_on_resume(root, today)
    assert changed == {"train.amp_cpu": (NOT_RECORDED, False)}
    assert repr(NOT_RECORDED) == "(not recorded)"
    (root / "run.json").write_text(json.dumps(recorded, default=list))
    assert settings_changed_on_resume(root, today) == {}
