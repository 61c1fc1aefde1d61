"""The private parts of stable-baselines3 that train/rl/ relies on are all still there."""

from __future__ import annotations

import stable_baselines3

from train.rl.sb3 import SB3_TESTED, missing_internals


def test_every_private_sb3_name_relied_on_exists() -> None:
    missing = missing_internals()
    assert not missing, (
        f"stable-baselines3 {stable_baselines3.__version__} lacks what train/rl/sb3.py relies on "
        f"(tested with {SB3_TESTED}): {'; '.join(missing)}. Adapt train/rl/sb3.py to this release, "
        "or install the pinned one"
    )


def test_a_renamed_attribute_is_named_with_its_use(monkeypatch) -> None:
    import train.rl.sb3 as sb3

    class Renamed:
        def __init__(self) -> None:
            self.last_observation = None

    monkeypatch.setattr(sb3, "RELIED_ON", ((Renamed, "_last_obs", "the rollout's start"),))
    assert sb3.missing_internals() == ["Renamed._last_obs (the rollout's start)"]
