"""Packed BC rows: several episodes of one instruction per row, each step seeing only its own
episode, so a packed row trains exactly what the same episodes would train alone."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_config, random_frames

import envs
from envs.data.collect import collect
from policies import InstructionPolicy
from policies.fusion import FUSIONS
from train.data import ChunkDataset


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("data") / "demos"
    collect(str(path), envs.CRAFTER_ID, "crafter_planner", 16, tasks=["collect_wood", "place_table"], seed=3)
    return str(path)


def test_packed_rows_hold_every_step_once_with_one_instruction(demos: str) -> None:
    plain = ChunkDataset(demos, 32)
    packed = ChunkDataset(demos, 32, pack=True, seed=1)
    assert len(packed) < len(plain) and packed.real_fraction > plain.real_fraction

    def steps(dataset: ChunkDataset) -> Counter:
        seen: Counter = Counter()
        for row in dataset.rows:
            for number, start, stop in row:
                seen.update((number, t) for t in range(start, stop))
        return seen

    assert steps(packed) == steps(plain) and max(steps(packed).values()) == 1
    for index in range(len(packed)):
        item = packed[index]
        row = packed.rows[index]
        assert {packed.data.episodes[n]["instruction"] for n, _, _ in row} == {item["instruction"]}
        mask, segments, times = item["frame_mask"], item["segments"], item["times"]
        real = int(mask.sum())
        assert real == sum(stop - start for _, start, stop in row) and bool(mask[:real].all())
        for segment, (number, start, stop) in enumerate(row):
            where = (segments == segment) & mask
            assert times[where].tolist() == list(range(start, stop))
            chunk = packed.data.chunk(number, start, stop)
            assert torch.equal(item["frames"][where], torch.from_numpy(chunk["images"]))
            assert torch.equal(item["actions"][where], torch.from_numpy(chunk["actions"]))


def test_packing_is_fixed_by_its_seed(demos: str) -> None:
    assert ChunkDataset(demos, 32, pack=True, seed=4).rows == ChunkDataset(demos, 32, pack=True, seed=4).rows


@pytest.mark.parametrize("fusion_type", sorted(FUSIONS))
def test_a_packed_row_equals_its_episodes_run_alone(fusion_type: str) -> None:
    torch.manual_seed(0)
    config = make_tiny_config(fusion_type).replace(**{"fusion_kwargs.num_blocks": 2})
    model = InstructionPolicy(config).eval()
    frames = random_frames(1, 12, seed=2)
    lengths = (5, 4, 3)  # three episodes of one instruction in one row
    segments = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths))[None]
    times = torch.cat([torch.arange(n) for n in lengths])[None]
    instruction = ["collect wood"]
    with torch.no_grad():
        packed = model(frames, instruction, times=times, segments=segments).logits[0]
        start = 0
        for length in lengths:
            alone = model(frames[:, start : start + length], instruction).logits[0]
            torch.testing.assert_close(packed[start : start + length], alone, atol=1e-5, rtol=1e-5)
            start += length
        # Without segments the later episodes would read the earlier ones' frames.
        leaky = model(frames, instruction, times=times).logits[0]
    assert not torch.allclose(leaky[lengths[0] :], packed[lengths[0] :], atol=1e-4)


def test_training_on_packed_rows_reads_only_real_steps(demos: str, tmp_path: Path) -> None:
    from train.bc import train_bc
    from train.config import load_run_config

    repo = Path(__file__).resolve().parents[2]
    run = load_run_config(repo / "configs" / "tiny.yaml", ["train.steps=4", "train.pack=true"])
    summary = train_bc(run, demos, str(tmp_path / "run"), progress=False)
    assert summary["steps"] == 4 and summary["real_fraction"] > ChunkDataset(demos, 16).real_fraction
