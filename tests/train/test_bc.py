from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from safetensors.torch import load_file

import envs
from envs.data.collect import collect
from envs.data.store import Dataset
from policies import InstructionPolicy
from train.batch import Batch
from train.bc import train_bc, train_bc_policy
from train.config import load_run_config
from train.data import ChunkDataset
from train.errors import TrainingDiverged
from train.validation import validate

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("data") / "demos"
    collect(
        str(path),
        envs.CRAFTER_ID,
        "crafter_planner",
        12,
        tasks=["collect_wood", "eat_cow", "place_table"],
        seed=5,
    )
    return str(path)


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_config_overrides_and_errors(tmp_path: Path) -> None:
    run = load_run_config(TINY, ["train.lr=3e-4", "policy.fusion_kwargs.fusion_type=gmu", "train.steps=7"])
    assert (run.train.lr, run.train.steps, run.policy.fusion_kwargs.fusion_type) == (3e-4, 7, "gmu")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['train.learning_rate'\]"):
        load_run_config(TINY, ["train.learning_rate=1"])
    with pytest.raises(ValueError, match="--set expects key=value"):
        load_run_config(TINY, ["train.lr"])
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        load_run_config(tmp_path / "bad.yaml")


def test_resume_gives_the_same_parameters(demos: str, tmp_path: Path) -> None:
    straight = load_run_config(TINY, ["train.steps=20", "train.checkpoint_every=10", "train.augment_shift=2"])
    train_bc(straight, demos, str(tmp_path / "a"), progress=False)
    # The same run interrupted right after its step-10 checkpoint, then resumed.
    import train.bc as bc

    class Stop(Exception):
        pass

    original = bc.save_bc_checkpoint

    def save_then_stop(directory, policy, optimizer, scheduler, step, run, data):
        original(directory, policy, optimizer, scheduler, step, run, data)
        if step == 10:
            raise Stop

    bc.save_bc_checkpoint = save_then_stop
    try:
        with pytest.raises(Stop):
            train_bc(straight, demos, str(tmp_path / "b"), progress=False)
    finally:
        bc.save_bc_checkpoint = original
    assert json.loads((tmp_path / "b" / "checkpoint" / "config.json").read_text())["trained_steps"] == 10
    train_bc(straight, demos, str(tmp_path / "b"), resume=str(tmp_path / "b"), progress=False)
    a, b = weights(tmp_path / "a" / "checkpoint"), weights(tmp_path / "b" / "checkpoint")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_resume_with_loader_workers_reads_the_same_batches(
    demos: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DataLoader worker processes on (the default): a run interrupted after its step-4
    checkpoint and resumed trains on exactly the batches of an uninterrupted run and ends with
    the same weights."""
    import train.bc as bc

    consumed: list[tuple] = []

    class Recorded:
        def __init__(self, loader) -> None:
            self.loader = loader

        def __iter__(self):
            for batch in self.loader:
                consumed.append(
                    (
                        tuple(batch.instructions),
                        batch.times.tolist(),
                        batch.actions.tolist(),
                        int(batch.frames.long().sum()),
                    )
                )
                yield batch

    make_loader = bc.make_loader
    monkeypatch.setattr(bc, "make_loader", lambda *args, **kwargs: Recorded(make_loader(*args, **kwargs)))
    run = load_run_config(TINY, ["train.steps=8", "train.checkpoint_every=4", "train.workers=2"])
    train_bc(run, demos, str(tmp_path / "a"), progress=False)
    straight, consumed[:] = list(consumed), []

    class Stop(Exception):
        pass

    save = bc.save_bc_checkpoint

    def save_then_stop(directory, policy, optimizer, scheduler, step, *args, **kwargs):
        save(directory, policy, optimizer, scheduler, step, *args, **kwargs)
        if step == 4:
            raise Stop

    monkeypatch.setattr(bc, "save_bc_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        train_bc(run, demos, str(tmp_path / "b"), progress=False)
    monkeypatch.setattr(bc, "save_bc_checkpoint", save)
    train_bc(run, demos, str(tmp_path / "b"), resume=str(tmp_path / "b"), progress=False)
    assert len(straight) == 8 and consumed == straight
    a, b = weights(tmp_path / "a" / "checkpoint"), weights(tmp_path / "b" / "checkpoint")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_tensorboard_tags(demos: str, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = load_run_config(
        TINY, ["train.steps=4", "train.log_every=2", "train.eval_every=2", "train.eval_episodes=1"]
    )
    train_bc(
        run,
        demos,
        str(tmp_path / "r"),
        progress=False,
        evaluate_fn=lambda p, s, w: w.add_scalar("eval/success_rate", 0.5, s) or {},
    )
    events = EventAccumulator(str(tmp_path / "r" / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/accuracy_head0",
        "train/lr",
        "train/grad_norm",
        "train/samples_per_s",
    } <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    assert [e.step for e in events.Scalars("eval/success_rate")] == [2, 4]


def test_nan_loss_stops_with_last_good_checkpoint(demos: str, tmp_path: Path) -> None:
    run = load_run_config(
        TINY,
        [
            "train.steps=50",
            "train.checkpoint_every=1",
            "train.lr=1e30",
            "train.grad_clip=0",
            "train.warmup_steps=0",
        ],
    )
    with pytest.raises(TrainingDiverged, match=r"training stopped; the last good checkpoint") as raised:
        train_bc(run, demos, str(tmp_path / "n"), progress=False)
    checkpoint = tmp_path / "n" / "checkpoint"
    if checkpoint.exists():
        assert f"({checkpoint}, step " in str(raised.value)
        InstructionPolicy.from_pretrained(checkpoint)
    else:
        assert "none was written" in str(raised.value)


@pytest.fixture(scope="module")
def three_demos(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One short demonstration per task, each with its own instruction (21 steps in all)."""
    path = tmp_path_factory.mktemp("three") / "demos"
    collect(
        str(path),
        envs.CRAFTER_ID,
        "crafter_planner",
        3,
        tasks=["collect_wood", "eat_cow", "place_table"],
        seed=5,
    )
    return str(path)


def dataset_fit(
    policy: InstructionPolicy, data: str, rename: dict[str, str] | None = None
) -> tuple[float, float]:
    """Loss and accuracy of ``policy`` over every step of ``data`` (instructions mapped by ``rename``)."""
    chunks = ChunkDataset(data, 32)
    batch = Batch.collate([chunks[i] for i in range(len(chunks))])
    texts = [(rename or {}).get(text, text) for text in batch.instructions]
    policy.eval()
    with torch.no_grad():
        logits = policy(batch.frames, texts, times=batch.times, frame_mask=batch.frame_mask).logits
    mask, actions = batch.frame_mask, batch.actions
    loss = -(policy.distribution(logits).log_prob(actions) * mask).sum() / mask.sum()
    accuracy = ((logits.argmax(-1) == actions) & mask).sum() / mask.sum()
    return float(loss), float(accuracy)


@pytest.mark.slow
def test_bc_learns_a_batch(three_demos: str, tmp_path: Path) -> None:
    """The whole (tiny) dataset each step: BC must fit it from frames, times and instructions,
    far below the loss of predicting the action frequencies, and the fit must hang on the
    instruction (swapping instructions between the episodes breaks it)."""
    run = load_run_config(
        TINY,
        [
            "train.steps=100",
            "train.lr=1e-2",
            "train.warmup_steps=0",
            "train.batch_size=3",
            "train.chunk_length=32",
            "train.log_every=100",
            "policy.instruction_dropout=0.0",
        ],
    )
    policy, summary = train_bc_policy(run, three_demos, str(tmp_path / "o"), progress=False)
    data = Dataset(three_demos)
    labels = np.concatenate([data.episode(n).actions for n in range(len(data))])
    frequencies = np.bincount(labels) / len(labels)
    frequencies = frequencies[frequencies > 0]
    label_entropy = float(-(frequencies * np.log(frequencies)).sum())  # 1.62 nats
    loss, accuracy = dataset_fit(policy, three_demos)
    assert accuracy >= 0.9 and loss < 0.5 * label_entropy, (loss, accuracy, label_entropy, summary)
    instructions = [entry["instruction"] for entry in data.episodes]
    swapped = dict(zip(instructions, instructions[1:] + instructions[:1], strict=True))
    swapped_loss, _ = dataset_fit(policy, three_demos, swapped)
    assert swapped_loss > loss + 1.0, (swapped_loss, loss)
    # Validation reads the same steps with swapped instructions and sees the dependence too.
    result = validate(policy, ChunkDataset(three_demos, 32), 3, "cpu")
    assert result["accuracy"] >= 0.9 and result["accuracy_swapped"] < result["accuracy"] - 0.3, result
    assert result["loss_swapped"] > result["loss"] + 1.0, result


def test_autocast_device_follows_amp_amp_cpu_the_device_and_native_bf16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import train.common as common

    for native in (True, False):
        monkeypatch.setattr(common, "cpu_has_native_bf16", lambda native=native: native)
        assert common.autocast_device("cuda:0", True) == "cuda"
        assert common.autocast_device("cuda:0", True, amp_cpu=False) == "cuda"
        # A CPU trains in fp32 by default, native bf16 or not; amp_cpu opts a native one in.
        assert common.autocast_device("cpu", True) is None
        assert common.autocast_device("cpu", True, amp_cpu=True) == ("cpu" if native else None)
        assert common.autocast_device("cpu", False, amp_cpu=True) is None
        assert (
            common.autocast_device("cpu", False) is None and common.autocast_device("cuda:1", False) is None
        )


@pytest.mark.parametrize(
    ("native", "settings", "expected"),
    [
        (True, [], False),  # the default on every CPU: fp32
        (True, ["train.amp_cpu=true"], True),
        (False, ["train.amp_cpu=true"], False),  # emulated bf16 would be slower
        (True, ["train.amp=false", "train.amp_cpu=true"], False),
    ],
)
def test_bc_on_cpu_trains_in_fp32_unless_amp_cpu_opts_a_native_bf16_cpu_in(
    demos: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    native: bool,
    settings: list[str],
    expected: bool,
) -> None:
    """On CPU the training forward runs in fp32 by default (bf16 autocast fit long runs worse:
    "Learning results", E26-E28); ``train.amp_cpu`` runs it under bf16 autocast on a CPU with
    native bf16, and ``train.amp=false`` turns autocast off everywhere."""
    import train.common as common

    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: native)
    seen: list[tuple[bool, torch.dtype]] = []
    forward = InstructionPolicy.forward

    def recording(self: InstructionPolicy, *args: object, **kwargs: object) -> object:
        if self.training:
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(InstructionPolicy, "forward", recording)
    run = load_run_config(TINY, ["train.steps=2", "train.device=cpu", *settings])
    summary = train_bc(run, demos, str(tmp_path / "o"), progress=False)
    assert summary["steps"] == 2 and len(seen) == 2
    assert all(enabled == expected for enabled, _ in seen), seen
    assert not expected or all(dtype == torch.bfloat16 for _, dtype in seen)


def test_corrupt_dataset_gets_a_clear_error(demos: str, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(demos, broken)
    for path in (broken / "episodes").rglob("*.npz"):
        path.write_bytes(path.read_bytes()[:200])
    result = run_cli("bc", "--config", TINY, "--data", str(broken), "--out", str(tmp_path / "x"), check=False)
    assert result.returncode == 2
    assert (
        "(episode " in result.stderr
        and "is corrupt or truncated" in result.stderr
        and "data check" in result.stderr
    )


@pytest.mark.slow
def test_ddp_two_processes_end_with_identical_weights(demos: str, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        str(REPO / "tests" / "support" / "ddp_shard_worker.py"),
        TINY,
        demos,
        str(tmp_path / "ddp"),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (
        load_file(str(tmp_path / "ddp" / "rank0.safetensors")),
        load_file(str(tmp_path / "ddp" / "rank1.safetensors")),
    )
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # The run's own initial weights (seeded as train_bc seeds them): training moved them.
    run = load_run_config(TINY)
    torch.manual_seed(run.train.seed)
    initial = InstructionPolicy(run.policy).state_dict()
    assert rank0.keys() <= initial.keys()
    assert any(not torch.equal(rank0[k], initial[k]) for k in rank0)
    # Each rank reads its own shard: disjoint, together the whole dataset, nothing read outside it.
    shards = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert not set(shards[0]["shard"]) & set(shards[1]["shard"])
    assert sorted(shards[0]["shard"] + shards[1]["shard"]) == list(range(len(Dataset(demos))))
    for shard in shards:
        assert shard["read"] and set(shard["read"]) <= set(shard["shard"])


def test_bc_and_eval_cli(demos: str, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = run_cli(
        "bc",
        "--config",
        TINY,
        "--set",
        "train.steps=4",
        "--data",
        demos,
        "--out",
        str(out),
        "--json",
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["steps"] == 4
    assert (out / "config.resolved.yaml").exists() and (out / "checkpoint" / "run.json").exists()
    result = run_cli(
        "eval",
        "--checkpoint",
        str(out / "checkpoint"),
        "--env",
        envs.CRAFTER_ID,
        "--episodes",
        "2",
        "--tasks",
        "collect_wood",
        "--workers",
        "2",
        "--json",
        "--video-dir",
        str(tmp_path / "v"),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["episodes"] == 2 and "collect_wood" in report["tasks"]
    assert len(report["tasks"]["collect_wood"]["ci95"]) == 2
    assert (tmp_path / "v" / "correct_000.mp4").stat().st_size > 1000
    result = run_cli(
        "eval",
        "--checkpoint",
        str(out / "checkpoint"),
        "--env",
        envs.CRAFTER_ID,
        "--episodes",
        "2",
        "--tasks",
        "collect_wood",
        "eat_cow",
        "--workers",
        "1",
        "--sensitivity",
        check=False,
    )
    assert result.returncode == 0 and "mean success(correct) - success(swapped)" in result.stdout


def test_periodic_eval_logs_success_attention_and_video(demos: str, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from train.periodic_eval import periodic_evaluator

    run = load_run_config(TINY, ["train.steps=2", "train.eval_every=2", "train.eval_episodes=2"])
    train_bc(run, demos, str(tmp_path / "e"), progress=False, evaluate_fn=periodic_evaluator(run, demos))
    events = EventAccumulator(str(tmp_path / "e" / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "eval/success_rate" in events.Tags()["scalars"]
    assert {"eval/attention_timeline", "eval/rollout"} <= set(events.Tags()["images"])
    gif = events.Images("eval/rollout")[0].encoded_image_string
    assert gif[:6] in (b"GIF89a", b"GIF87a")


def test_resume_needs_a_training_checkpoint(demos: str, tmp_path: Path) -> None:
    InstructionPolicy(load_run_config(TINY).policy).save_pretrained(tmp_path / "inference_only")
    with pytest.raises(ValueError, match=r"has no trainer\.pt: it is not a training checkpoint"):
        train_bc(load_run_config(TINY), demos, str(tmp_path / "r"), resume=str(tmp_path / "inference_only"))
