from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_tiny_config, run_cli
from safetensors.torch import load_file
from signal_env import SIGNAL_ID

import envs
from agent import Agent
from policies import ActionSpaceConfig, InstructionPolicy
from train.config import RLConfig, RunConfig, load_run_config
from train.rl import build_ppo, kl_divergence, make_env, pack_minibatches, split_segments

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")


def tiny_run(**rl: object) -> RunConfig:
    defaults = dict(n_envs=4, vec_env="dummy", n_steps=16, batch_size=32, n_epochs=4, lr=3e-3, ent_coef=0.0)
    return RunConfig(policy=make_tiny_config(), rl=RLConfig(**{**defaults, **rl}))


def signal_ppo(run: RunConfig, length: int = 4, **kwargs: object):
    env = make_env(SIGNAL_ID, run.rl.n_envs, run.rl.vec_env, run.rl.seed, 64, length=length)
    return build_ppo(run, env, **kwargs), env


def greedy_accuracy(algo, env, steps: int = 100) -> float:
    obs = env.reset()
    starts = np.ones(env.num_envs, bool)
    rewards = []
    for _ in range(steps):
        actions, _ = algo.policy.predict(obs, episode_start=starts, deterministic=True)
        obs, reward, starts, _ = env.step(actions)
        rewards.extend(reward.tolist())
    return float(np.mean(rewards))


def test_ppo_learns_an_instruction_dependent_task() -> None:
    """Frames are noise; only the instruction names the rewarded action (chance = 0.25)."""
    torch.manual_seed(0)
    algo, env = signal_ppo(tiny_run())
    before = greedy_accuracy(algo, env)
    algo.learn(3000)
    after = greedy_accuracy(algo, env)
    env.close()
    assert after >= 0.8, (before, after)
    assert after > before + 0.3
    assert set(algo.task_success()) == {f"signal-{i}" for i in range(4)}


def test_learning_without_tensorboard_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SB3 gives a model without a logger of its own a new SB3-<time> folder under the
    temporary directory on every learn(); built by build_ppo it writes none."""
    import tempfile

    monkeypatch.delenv("SB3_LOGDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    algo, env = signal_ppo(tiny_run(n_envs=2, n_steps=4, batch_size=8, n_epochs=1))
    algo.learn(8)
    env.close()
    assert algo.num_timesteps == 8
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith("SB3-")] == []


def test_rollout_log_probs_equal_the_update_forward() -> None:
    """Episodes (7 steps) span rollouts (4 steps) and the window (4 frames): the update's
    parallel forward over segments + context must reproduce the rollout's log-probabilities,
    also after weight updates (the rollout cache is rebuilt under the new weights)."""
    run = tiny_run(n_envs=3, n_steps=4, batch_size=6, n_epochs=1)
    run = RunConfig(policy=run.policy.replace(**{"fusion_kwargs.max_history": 4}), rl=run.rl)
    algo, env = signal_ppo(run, length=7)
    algo.learn(3 * 4 * 3)  # three rollouts and updates
    from stable_baselines3.common.callbacks import BaseCallback

    class Nothing(BaseCallback):
        def _on_step(self) -> bool:
            return True

    callback = Nothing()
    callback.init_callback(algo)
    assert algo.collect_rollouts(algo.env, callback, algo.rollout_buffer, algo.n_steps)
    buffer = algo.rollout_buffer
    segments = split_segments(buffer.episode_starts.astype(bool), [len(c["frames"]) for c in buffer.context])
    assert any(s.context > 0 for s in segments), "the test must exercise context from an earlier rollout"
    batch = algo._minibatch(segments)
    with torch.no_grad():
        out = algo.model(batch.frames, batch.instructions, times=batch.times, frame_mask=batch.frame_mask)
    mask = batch.loss_mask
    recomputed = algo.model.distribution(out.logits[mask]).log_prob(batch.actions[mask])
    torch.testing.assert_close(recomputed, batch.old_log_prob[mask], atol=1e-5, rtol=0)
    env.close()


def _bc_reference(tmp_path: Path) -> tuple[RunConfig, str]:
    torch.manual_seed(3)
    config = make_tiny_config().replace(
        action_space={"type": "Discrete", "sizes": [4]}, **{"fusion_kwargs.max_history": 4}
    )
    InstructionPolicy(config).save_pretrained(tmp_path / "bc")
    return RunConfig(policy=config, rl=tiny_run(n_envs=3, n_steps=4, batch_size=6, kl_coef=1.0).rl), str(
        tmp_path / "bc"
    )


def _weights_after(run: RunConfig, init: str, updates: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    algo, env = signal_ppo(run, length=7, init=init)
    algo.learn(updates * run.rl.n_envs * run.rl.n_steps)
    env.close()
    return {k: v.clone() for k, v in algo.model.state_dict().items()}


def test_reference_logits_are_computed_once_per_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The frozen reference's logits are computed in the first epoch and read in the later ones:
    the weights after three updates of three epochs equal those of recomputing them every time."""
    from train.rl import SequencePPO

    run, init = _bc_reference(tmp_path)
    run = RunConfig(policy=run.policy, rl=dataclasses.replace(run.rl, n_epochs=3))
    original = SequencePPO._reference_logits
    seen = {"computed": 0, "read": 0}

    def counting(self, batch, segments, cache):
        seen["computed"] += sum((s.env, s.start) not in cache for s in segments)
        seen["read"] += len(segments)
        return original(self, batch, segments, cache)

    monkeypatch.setattr(SequencePPO, "_reference_logits", counting)
    cached = _weights_after(run, init)
    assert seen["computed"] > 0 and seen["read"] == 3 * seen["computed"]
    monkeypatch.setattr(
        SequencePPO, "_reference_logits", lambda self, batch, segs, cache: original(self, batch, segs, {})
    )
    recomputed = _weights_after(run, init)
    initial = InstructionPolicy.from_pretrained(init).state_dict()
    assert any(not torch.equal(initial[name], value) for name, value in cached.items())
    for name, value in cached.items():
        torch.testing.assert_close(value, recomputed[name], atol=1e-5, rtol=0, msg=name)


def test_context_frames_are_encoded_once_with_the_rollout_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames from before the rollout are encoded once per update, under the weights the rollout
    used (what the rollout's log-probs were computed with): with one epoch of one minibatch,
    where those are still the current weights, the update equals encoding them in the forward."""
    from train.rl import SequencePPO

    run, init = _bc_reference(tmp_path)
    run = RunConfig(policy=run.policy, rl=dataclasses.replace(run.rl, n_epochs=1, batch_size=64, kl_coef=0.0))
    original = SequencePPO._minibatch
    seen = {"context": 0}

    def counting(self, segments, context_features=None):
        seen["context"] += sum(s.context > 0 for s in segments) if context_features else 0
        return original(self, segments, context_features)

    monkeypatch.setattr(SequencePPO, "_minibatch", counting)
    cached = _weights_after(run, init)
    assert seen["context"] > 0, "the test must exercise context frames from an earlier rollout"
    monkeypatch.setattr(SequencePPO, "_minibatch", lambda self, segs, features=None: original(self, segs))
    recomputed = _weights_after(run, init)
    for name, value in cached.items():
        torch.testing.assert_close(value, recomputed[name], atol=1e-5, rtol=0, msg=name)


def test_segments_split_at_episode_starts_and_pack() -> None:
    starts = np.zeros((6, 2), bool)
    starts[0, 0] = True
    starts[3, 0] = True
    starts[4, 1] = True
    segments = split_segments(starts, [5, 7])
    assert [(s.env, s.start, s.stop, s.context) for s in segments] == [
        (0, 0, 3, 0),
        (0, 3, 6, 0),
        (1, 0, 4, 7),
        (1, 4, 6, 0),
    ]
    batches = pack_minibatches(segments, 6, np.random.default_rng(0))
    assert sorted((s.env, s.start) for b in batches for s in b) == sorted((s.env, s.start) for s in segments)
    assert all(sum(s.steps for s in b) <= 6 for b in batches)


def test_bc_init_equals_the_bc_policy_at_step_zero(tmp_path: Path) -> None:
    """At step 0 the RL policy is the BC policy, seen through what SB3 uses: the policy object's
    greedy actions, and the log-probabilities and values recorded by the first rollout."""
    torch.manual_seed(3)
    config = make_tiny_config().replace(action_space={"type": "Discrete", "sizes": [4]})
    bc = InstructionPolicy(config).eval()
    bc.save_pretrained(tmp_path / "bc")
    algo, env = signal_ppo(tiny_run(), init=str(tmp_path / "bc"))
    obs = env.reset()
    starts = np.ones(env.num_envs, bool)
    texts = algo.policy.instructions(obs["instruction_ids"], obs["instruction_mask"])
    state_rl, state_bc = algo.model.initial_state(texts), bc.initial_state(texts)
    with torch.no_grad():
        for step in range(6):  # episodes of 4 steps: the rows restart at step 4
            if step and starts.any():
                texts = algo.policy.instructions(obs["instruction_ids"], obs["instruction_mask"])
                rows = torch.from_numpy(np.asarray(starts, bool))
                algo.model.reset_rows(state_rl, rows, texts)
                bc.reset_rows(state_bc, rows, texts)
            frames = algo.policy.frames(obs["image"])
            rl_logits = algo.model.step(state_rl, frames).logits
            bc_logits = bc.step(state_bc, frames).logits
            torch.testing.assert_close(
                algo.model.distribution(rl_logits).parts[0].exp(), bc.distribution(bc_logits).parts[0].exp()
            )
            actions, _ = algo.policy.predict(obs, episode_start=starts, deterministic=True)
            assert actions.tolist() == bc_logits.argmax(-1).tolist()
            obs, _, starts, _ = env.step(actions)
    # The first rollout (16 steps of 4 envs, episodes of 4 steps) samples from the BC policy.
    _, callback = algo._setup_learn(algo.n_steps * env.num_envs, None)
    assert algo.collect_rollouts(algo.env, callback, algo.rollout_buffer, algo.n_steps)
    buffer = algo.rollout_buffer
    state = None
    with torch.no_grad():
        for t in range(algo.n_steps):
            texts = algo.policy.instructions(
                buffer.observations["instruction_ids"][t], buffer.observations["instruction_mask"][t]
            )
            if state is None:
                state = bc.initial_state(texts)
            else:
                bc.reset_rows(state, torch.from_numpy(buffer.episode_starts[t].astype(bool)), texts)
            out = bc.step(state, algo.policy.frames(buffer.observations["image"][t]))
            actions = torch.from_numpy(buffer.actions[t, :, 0]).long()
            log_prob = bc.distribution(out.logits).log_prob(actions)
            torch.testing.assert_close(torch.from_numpy(buffer.log_probs[t]), log_prob, atol=1e-5, rtol=0)
            torch.testing.assert_close(torch.from_numpy(buffer.values[t]), out.value, atol=1e-5, rtol=0)
    assert buffer.episode_starts[1:].any(), "the rollout must cross episode boundaries"
    env.close()


def test_kl_penalty_keeps_the_policy_near_the_reference(tmp_path: Path) -> None:
    torch.manual_seed(4)
    config = make_tiny_config().replace(action_space={"type": "Discrete", "sizes": [4]})
    InstructionPolicy(config).save_pretrained(tmp_path / "bc")
    reference = InstructionPolicy.from_pretrained(tmp_path / "bc").eval()
    frames = torch.randint(0, 256, (4, 4, 16, 16, 3), dtype=torch.uint8)
    texts = [
        "press the red button",
        "press the green button",
        "press the blue button",
        "press the gray button",
    ]
    distances = {}
    for coef in (0.0, 5.0):
        torch.manual_seed(0)
        algo, env = signal_ppo(tiny_run(kl_coef=coef, kl_decay=0.9), init=str(tmp_path / "bc"))
        algo.learn(1024)
        env.close()
        with torch.no_grad():
            logits = algo.model(frames, texts).logits
            distances[coef] = float(kl_divergence(logits, reference(frames, texts).logits, (4,)).mean())
        if coef:
            assert algo.kl_coef == pytest.approx(coef * 0.9**16)  # 16 updates of 4 envs x 16 steps
    assert distances[5.0] < distances[0.0] / 2, distances


def test_kl_without_init_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="pass --init"):
        signal_ppo(tiny_run(kl_coef=0.1))


def test_rl_config_errors() -> None:
    with pytest.raises(ValueError, match=r"rl\.bc_data"):
        RLConfig(bc_coef=0.5)
    with pytest.raises(ValueError, match=r"rl\.vec_env"):
        load_run_config(TINY, ["rl.vec_env=threads"])


@pytest.fixture(scope="module")
def crafter_demos(tmp_path_factory: pytest.TempPathFactory) -> str:
    from envs.data.collect import collect

    path = tmp_path_factory.mktemp("rl") / "demos"
    collect(str(path), envs.CRAFTER_ID, "crafter_planner", 4, tasks=["collect_wood"], seed=2)
    return str(path)


def test_rl_cli_subproc_bc_aux_checkpoint_resume(tmp_path: Path, crafter_demos: str) -> None:
    """Real Crafter in SubprocVecEnv workers, an auxiliary BC loss on demonstrations; the
    checkpoint loads in the runtime agent and in `eval`; --resume continues the step count."""
    out = tmp_path / "rl"
    common = [
        "--config", TINY,
        "--set", "rl.n_envs=2", "--set", "rl.n_steps=16", "--set", "rl.batch_size=16",
        "--set", "rl.n_epochs=1", "--set", f"rl.bc_data={crafter_demos}", "--set", "rl.bc_coef=0.5",
        "--env", envs.CRAFTER_ID, "--tasks", "collect_wood", "--out", str(out), "--json",
    ]  # fmt: skip
    result = run_cli("rl", *common, "--steps", "64")
    summary = json.loads(result.stdout)
    assert summary["timesteps"] == 64
    assert set(summary["timings_s"]) == {"env", "inference", "update"}
    checkpoint = out / "checkpoint"
    assert {"config.json", "model.safetensors", "trainer.pt"} <= {p.name for p in checkpoint.iterdir()}
    assert json.loads((checkpoint / "config.json").read_text())["rl_timesteps"] == 64
    agent = Agent.from_pretrained(checkpoint)
    assert agent.policy.config.action_space == ActionSpaceConfig.from_spec({"type": "Discrete", "n": 17})
    events = list((out / "tb").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert {"train/bc_loss", "train/value_loss", "time/fps"} <= set(tags)
    before = torch.load(checkpoint / "trainer.pt", weights_only=True)
    weights_before = load_file(str(checkpoint / "model.safetensors"))
    resumed = json.loads(run_cli("rl", *common, "--steps", "96", "--resume").stdout)
    assert resumed["timesteps"] == 96
    after = torch.load(checkpoint / "trainer.pt", weights_only=True)
    assert after["num_timesteps"] == 96 and after["n_updates"] == before["n_updates"] + 1  # one more rollout
    assert any(
        not torch.equal(v, weights_before[k])
        for k, v in load_file(str(checkpoint / "model.safetensors")).items()
    )
    run_cli("eval", "--checkpoint", str(checkpoint), "--env", envs.CRAFTER_ID, "--episodes", "1",
            "--tasks", "collect_wood", "--workers", "1", "--json")  # fmt: skip


def test_ablate_cli_writes_table_plot_and_json(tmp_path: Path, crafter_demos: str) -> None:
    out = tmp_path / "ablation"
    result = run_cli(
        "ablate", "--fusion", "cross_attention,gmu", "--data", crafter_demos, "--config", TINY,
        "--set", "train.steps=4", "--episodes", "2", "--tasks", "collect_wood", "--rl-steps", "32",
        "--set", "rl.n_envs=2", "--set", "rl.n_steps=16", "--set", "rl.batch_size=16", "--set", "rl.vec_env=dummy",
        "--out", str(out),
    )  # fmt: skip
    table = (out / "ablation.md").read_text()
    assert "| cross_attention |" in table and "| gmu |" in table and table in result.stdout
    summary = json.loads((out / "ablation.json").read_text())
    assert [row["fusion"] for row in summary["rows"]] == ["cross_attention", "gmu"]
    assert all(row["parameters"] > 0 and row["act_ms"] > 0 for row in summary["rows"])
    assert (out / "cross_attention" / "seed0" / "rl" / "checkpoint" / "model.safetensors").exists()
    from PIL import Image

    assert Image.open(out / "ablation.png").size[0] > 200
    bad = run_cli("ablate", "--fusion", "cross_attn", "--data", crafter_demos, "--out", str(out), check=False)
    assert bad.returncode == 2 and "unknown fusion type(s) ['cross_attn']" in bad.stderr
