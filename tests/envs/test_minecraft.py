from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from minecraft_fixtures import vpt_tick, write_minerl_stream, write_vpt_recording

from envs.data.importers import import_minerl, import_vpt
from envs.data.store import Dataset, DatasetError
from envs.data.vpt import CAMERA_SCALER
from envs.minecraft import (
    KEYBOARD_BUTTONS,
    MINERL_TASKS,
    ActionLayout,
    MineRLInstructEnv,
    bins_to_camera,
    camera_to_bins,
)
from envs.minecraft.actions import VPT_LAYOUT, ActionError

# MineRLObtainDiamond-v0's documented action space (minerl v0.4 docs, environments page).
OBTAIN_DIAMOND_KEYS = {
    "forward", "back", "left", "right", "jump", "sneak", "sprint", "attack", "camera",
    "place", "equip", "craft", "nearbyCraft", "nearbySmelt",
}  # fmt: skip


def test_camera_bins_are_vpt_mu_law_and_invert_within_one_bin() -> None:
    centers = bins_to_camera(np.arange(11)[:, None].repeat(2, 1))[:, 0]
    assert centers[5] == 0 and centers[0] == -10 and centers[10] == 10
    assert np.all(np.diff(centers) > 0)
    assert np.all(np.diff(centers)[:5] > np.diff(centers)[5:][::-1] - 1e-5)  # symmetric
    assert np.abs(np.diff(centers)).min() < 1.0 < np.abs(np.diff(centers)).max()  # finer near zero (mu-law)
    np.testing.assert_array_equal(
        camera_to_bins(bins_to_camera(np.arange(11)[:, None].repeat(2, 1))),
        np.arange(11)[:, None].repeat(2, 1),
    )
    xs = np.random.default_rng(0).uniform(-10, 10, (2000, 2))
    bins = camera_to_bins(xs)
    back = bins_to_camera(bins)
    widths = np.diff(centers)
    local = np.maximum(widths[np.clip(bins - 1, 0, 9)], widths[np.clip(bins, 0, 9)])
    assert np.all(np.abs(back - xs) <= local + 1e-5)
    assert camera_to_bins(np.array([[90.0, -400.0]])).tolist() == [[10, 0]]  # clipped to +-maxval
    linear = bins_to_camera(np.array([[0, 1]]), bins=21, maxval=10, mu=0)
    np.testing.assert_allclose(linear, [[-10, -9]])


# minerl 0.4.4's Dict action spaces, written out independently of envs.minecraft: the keys
# besides the 8 buttons and camera, and each Enum's values (minerl prints them sorted).
_OBTAIN_ENUMS_044 = {
    "place": {"none", "dirt", "stone", "cobblestone", "crafting_table", "furnace", "torch"},
    "equip": {"none", "air", "wooden_axe", "wooden_pickaxe", "stone_axe", "stone_pickaxe", "iron_axe", "iron_pickaxe"},
    "craft": {"none", "torch", "stick", "planks", "crafting_table"},
    "nearbyCraft": {"none", "wooden_axe", "wooden_pickaxe", "stone_axe", "stone_pickaxe", "iron_axe", "iron_pickaxe", "furnace"},
    "nearbySmelt": {"none", "iron_ingot", "coal"},
}  # fmt: skip
MINERL_044_ENUMS = {
    "MineRLTreechop-v0": {},
    **{
        f"MineRLNavigate{s}-v0": {"place": {"none", "dirt"}} for s in ("", "Dense", "Extreme", "ExtremeDense")
    },
    **{
        f"MineRLObtain{item}{s}-v0": _OBTAIN_ENUMS_044
        for item in ("IronPickaxe", "Diamond")
        for s in ("", "Dense")
    },
}
MINERL_044_NVEC = {
    "MineRLTreechop-v0": [2] * 8 + [11, 11],
    **{f"MineRLNavigate{s}-v0": [2] * 8 + [11, 11, 2] for s in ("", "Dense", "Extreme", "ExtremeDense")},
    **{f"MineRLObtain{i}{s}-v0": [2] * 8 + [11, 11, 7, 8, 5, 8, 3] for i in ("IronPickaxe", "Diamond") for s in ("", "Dense")},
}  # fmt: skip


def test_every_task_pins_minerl_044_actions() -> None:
    assert sorted(task.env_name for task in MINERL_TASKS.values()) == sorted(MINERL_044_ENUMS)
    assert set(KEYBOARD_BUTTONS) == {"forward", "back", "left", "right", "jump", "sneak", "sprint", "attack"}
    for task in MINERL_TASKS.values():
        layout = ActionLayout(enums=task.enums)
        assert {name: set(values) for name, values in task.enums} == MINERL_044_ENUMS[task.env_name], (
            task.name
        )
        assert all(values[0] == "none" for _, values in task.enums), task.name  # "none" is the no-op
        assert layout.nvec == MINERL_044_NVEC[task.env_name], task.name
        assert set(layout.decode(layout.noop())) == {
            *KEYBOARD_BUTTONS,
            "camera",
            *MINERL_044_ENUMS[task.env_name],
        }


@pytest.mark.parametrize("task", sorted(MINERL_TASKS))
def test_layout_round_trip_against_the_documented_spaces(task: str) -> None:
    spec = MINERL_TASKS[task]
    layout = ActionLayout(enums=spec.enums)
    rng = np.random.default_rng(1)
    vectors = rng.integers(0, layout.nvec, (200, len(layout.nvec)))
    for vector in vectors:
        action = layout.decode(vector)
        assert set(action) == {*KEYBOARD_BUTTONS, "camera", *(name for name, _ in spec.enums)}
        assert action["camera"].shape == (2,) and action["camera"].dtype == np.float32
        for name, values in spec.enums:
            assert action[name] in values
        np.testing.assert_array_equal(layout.encode(action), vector)
    assert layout.noop().tolist() == [0] * 8 + [5, 5] + [0] * len(spec.enums)


def test_obtain_diamond_layout_matches_minerl() -> None:
    layout = ActionLayout(enums=MINERL_TASKS["ObtainDiamond"].enums)
    assert set(layout.decode(layout.noop())) == OBTAIN_DIAMOND_KEYS
    assert layout.nvec == [2] * 8 + [11, 11] + [7, 8, 5, 8, 3]
    with pytest.raises(ActionError, match=r"'place': unknown value\(s\) \['diamond'\]"):
        layout.encode({"place": "diamond"})
    with pytest.raises(ActionError, match="does not fit"):
        layout.decode([0] * 8 + [11, 5] + [0] * 5)
    with pytest.raises(ActionError, match="camera_bins must be odd"):
        ActionLayout(camera_bins=10)


class FakeMineRL:
    """Stands in for a MineRL 0.4 env: old gym API, Dict observations as minerl documents them."""

    def __init__(self, rewards: list[float], limit: int) -> None:
        self.rewards, self.limit, self.t, self.actions, self.seeds = rewards, limit, 0, [], []

    def seed(self, seed: int) -> None:
        self.seeds.append(seed)

    def _obs(self) -> dict:
        pov = np.full((64, 64, 3), self.t, np.uint8)
        return {"pov": pov, "inventory": {"dirt": np.array(self.t), "log": np.array(2)}}

    def reset(self) -> dict:
        self.t = 0
        return self._obs()

    def step(self, action: dict):
        self.actions.append(action)
        reward = self.rewards[self.t]
        self.t += 1
        done = reward >= 100 or self.t >= self.limit
        info = {"TimeLimit.truncated": True} if self.t >= self.limit and reward < 100 else {}
        return self._obs(), reward, done, info


def test_env_adapter_contract_with_a_minerl_style_env() -> None:
    fake = FakeMineRL([0.0, 0.0, 100.0], limit=10)
    env = MineRLInstructEnv("Navigate", include_inventory=True, env=fake)
    observation, info = env.reset(seed=7)
    assert fake.seeds == [7]
    assert observation["instruction"] == MINERL_TASKS["Navigate"].instruction
    assert env.observation_space.contains(observation)
    assert observation["inventory"].tolist() == [0.0]
    action = env.action_space.sample()
    action[-1] = 1  # place dirt
    observation, reward, terminated, truncated, info = env.step(action)
    assert fake.actions[-1]["place"] == "dirt" and set(fake.actions[-1]) == {
        *KEYBOARD_BUTTONS,
        "camera",
        "place",
    }
    assert (terminated, truncated, info["success"]) == (False, False, False)
    env.step(env.action_space.sample())
    _, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert (reward, terminated, truncated, info["success"]) == (100.0, True, False, True)
    timed = MineRLInstructEnv("Treechop", env=FakeMineRL([0.0] * 5, limit=2))
    timed.reset()
    timed.step(timed.action_space.sample())
    *_, terminated, truncated, info = timed.step(timed.action_space.sample())
    assert (terminated, truncated, info["success"]) == (False, True, False)


def test_env_adapter_without_minerl_names_the_fix() -> None:
    import envs

    if envs.minerl_available():
        pytest.skip("minerl is installed here")
    with pytest.raises(ImportError, match=r"docs/minecraft\.md"):
        MineRLInstructEnv("Treechop")


def test_import_minerl_v04_streams(tmp_path: Path) -> None:
    root = tmp_path / "minerl"
    written = [
        write_minerl_stream(root, "MineRLObtainDiamond-v0", f"v3_stream_{i}", 9 + i, seed=i) for i in range(2)
    ]
    write_minerl_stream(root, "MineRLObtainDiamondDense-v0", "v3_dense", 5, seed=5, enums_as="index")
    summary = import_minerl(root, tmp_path / "data")
    assert summary["episodes"] == 3 and summary["action_space"]["nvec"] == [2] * 8 + [11, 11, 7, 8, 5, 8, 3]
    data = Dataset(tmp_path / "data")
    layout = ActionLayout(enums=MINERL_TASKS["ObtainDiamond"].enums)
    for index, arrays in enumerate(written):
        episode = data.episode(index)
        steps = len(arrays["reward"])
        assert episode.length == steps and len(episode.images) == steps + 1
        np.testing.assert_array_equal(episode.images[:steps], arrays["frames"][:steps])  # lead frames skipped
        np.testing.assert_array_equal(episode.images[-1], episode.images[-2])  # as minerl's pipeline
        np.testing.assert_array_equal(episode.rewards, arrays["reward"])
        columns = {k.split("$", 1)[1]: v for k, v in arrays.items() if k.startswith("action$")}
        np.testing.assert_array_equal(episode.actions, layout.encode_many(columns, steps))
        assert episode.instruction == "obtain a diamond" and episode.task == "ObtainDiamond"
    assert data.episode(2).task == "ObtainDiamondDense"
    assert json.loads((tmp_path / "data" / "metadata.json").read_text())["info"]["actions"]["components"][
        8:10
    ] == [
        "camera_pitch",
        "camera_yaw",
    ]


def test_import_minerl_errors_name_the_file(tmp_path: Path) -> None:
    root = tmp_path / "minerl"
    write_minerl_stream(root, "MineRLTreechop-v0", "s0", 6)
    stream = root / "MineRLTreechop-v0" / "s0"
    (stream / "recording.mp4").rename(stream / "moved.mp4")
    with pytest.raises(DatasetError, match=r"s0/recording\.mp4 is missing"):
        import_minerl(root, tmp_path / "a")
    (stream / "moved.mp4").rename(stream / "recording.mp4")
    arrays = dict(np.load(stream / "rendered.npz"))
    arrays["action$jump"] = arrays["action$jump"][:-1]
    np.savez(stream / "rendered.npz", **arrays)
    with pytest.raises(DatasetError, match=r"rendered\.npz: 'action\$jump' has 5 steps but 'reward' has 6"):
        import_minerl(root, tmp_path / "b")
    arrays["action$jump"] = np.zeros(6, np.int64)
    arrays["action$camera"] = np.zeros(6, object)
    np.savez(stream / "rendered.npz", **arrays)
    with pytest.raises(DatasetError, match="--allow-pickle only if you trust"):
        import_minerl(root, tmp_path / "c")
    arrays["action$camera"] = np.zeros((6, 2), np.float32)
    np.savez(stream / "rendered.npz", **arrays)
    meta = json.loads((stream / "metadata.json").read_text())
    (stream / "metadata.json").write_text(json.dumps({**meta, "true_video_frame_count": 40}))
    with pytest.raises(
        DatasetError, match=r"recording\.mp4 has 10 frames, expected true_video_frame_count = 40"
    ):
        import_minerl(root, tmp_path / "d")
    (stream / "metadata.json").write_text(json.dumps(meta))
    import_minerl(root, tmp_path / "e")  # repaired: imports
    write_minerl_stream(root, "MineRLNavigate-v0", "n0", 4)
    with pytest.raises(DatasetError, match="import them one at a time with --env"):
        import_minerl(root, tmp_path / "f")
    assert import_minerl(root, tmp_path / "g", env_names=["MineRLNavigate-v0"])["episodes"] == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no MineRL v0\.4 streams"):
        import_minerl(tmp_path / "empty", tmp_path / "h")


def test_import_vpt_follows_the_vpt_loader(tmp_path: Path) -> None:
    ticks = [
        vpt_tick(buttons=[0], new_buttons=[0]),  # attack stuck from the start: dropped -> null
        vpt_tick(keys=["key.keyboard.w"], buttons=[0]),  # forward; attack still stuck
        vpt_tick(),  # null: skipped with its frame
        vpt_tick(dx=24.0, dy=-8.0),  # camera only
        vpt_tick(buttons=[0], new_buttons=[0]),  # attack pressed again: not stuck any more
        vpt_tick(keys=["key.keyboard.w"], hotbar=2),  # scrolled to slot 3 while walking: hotbar.3
        vpt_tick(hotbar=4),  # a scroll alone is a null tick for VPT (checked before the hotbar fix)
        vpt_tick(keys=["key.keyboard.escape"], hotbar=4),  # ESC is not null but not in the action set
        vpt_tick(keys=["key.keyboard.space", "key.keyboard.left.shift"], buttons=[1], hotbar=4),
    ]
    frames = write_vpt_recording(tmp_path / "vpt", "cheeky-cornflower", ticks)
    summary = import_vpt(tmp_path / "vpt", tmp_path / "data", instruction="obtain a diamond pickaxe")
    episode = Dataset(tmp_path / "data").episode(0)
    kept = [1, 3, 4, 5, 7, 8]  # ticks 0, 2 and 6 are null
    assert (
        summary["episodes"] == 1
        and episode.length == len(kept) - 1
        and episode.images.shape[1:] == (64, 64, 3)
    )
    names = VPT_LAYOUT.components

    def pressed(row: np.ndarray) -> set[str]:
        return {names[i] for i in range(len(VPT_LAYOUT.buttons)) if row[i]}

    rows = episode.actions
    assert pressed(rows[0]) == {"forward"}
    assert (
        pressed(rows[1]) == set()
        and rows[1][20:22].tolist()
        == camera_to_bins(np.array([-8.0 * CAMERA_SCALER, 24.0 * CAMERA_SCALER])).tolist()
    )
    assert pressed(rows[2]) == {"attack"}
    assert pressed(rows[3]) == {"forward", "hotbar.3"}
    assert pressed(rows[4]) == set()  # ESC
    assert episode.instruction == "obtain a diamond pickaxe" and episode.truncated[-1]
    from envs.data.video import resize

    np.testing.assert_array_equal(episode.images[0], resize(frames[1], (64, 64)))


def test_import_vpt_errors_name_the_file(tmp_path: Path) -> None:
    ticks = [vpt_tick(keys=["key.keyboard.w"])] * 4
    write_vpt_recording(tmp_path / "vpt", "a", ticks)
    (tmp_path / "vpt" / "a.jsonl").write_text("\n".join(json.dumps(t) for t in ticks[:3]))
    with pytest.raises(DatasetError, match=r"a\.mp4 has 4 frames but .*a\.jsonl has 3 actions"):
        import_vpt(tmp_path / "vpt", tmp_path / "d1", instruction="x")
    (tmp_path / "vpt" / "a.jsonl").write_text('{"mouse": {}}\n')
    with pytest.raises(DatasetError, match=r"a\.jsonl line 1 is not a VPT action record"):
        import_vpt(tmp_path / "vpt", tmp_path / "d2", instruction="x")
    (tmp_path / "vpt" / "a.jsonl").unlink()
    with pytest.raises(DatasetError, match=r"a\.jsonl is missing"):
        import_vpt(tmp_path / "vpt", tmp_path / "d3", instruction="x")
