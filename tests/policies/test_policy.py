from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_parity, make_tiny_config, random_frames

from policies import (
    FUSIONS,
    ActionSpaceConfig,
    CheckpointError,
    ConfigError,
    InstructionPolicy,
    PolicyConfig,
    VisionConfig,
)
from policies.fusion import visibility
from policies.heads import FactorizedCategorical, guide

ALL = sorted(FUSIONS)
INSTRUCTIONS = ["collect wood", "eat a cow", "drink water"]


def build(fusion_type: str, seed: int = 0, **fusion: object) -> InstructionPolicy:
    torch.manual_seed(seed)
    return InstructionPolicy(make_tiny_config(fusion_type, **fusion)).eval()


@pytest.mark.parametrize("fusion_type", ALL)
def test_shapes_and_extras(fusion_type: str) -> None:
    model = build(fusion_type)
    frames = random_frames(3, 5)
    out = model(frames, INSTRUCTIONS, return_attention=True)
    assert out.logits.shape == (3, 5, 17) and out.value.shape == (3, 5)
    assert out.extras, "return_attention=True must return what the fusion has"
    for value in out.extras.values():
        assert value.shape[:2] == (3, 5)
    plain = model(frames, INSTRUCTIONS)
    assert plain.extras == {}
    torch.testing.assert_close(plain.logits, out.logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fusion_type", ALL)
@pytest.mark.parametrize("padding", ["none", "left", "right"])
def test_parallel_equals_incremental(fusion_type: str, padding: str) -> None:
    """Past the sliding-window boundary (T=11 > max_history=4) and with padded chunks."""
    model = build(fusion_type, max_history=4)
    batch, steps = 3, 11
    frames = random_frames(batch, steps, seed=1)
    mask = torch.ones(batch, steps, dtype=torch.bool)
    if padding == "left":
        mask[1, :3] = False
        mask[2, :6] = False
    elif padding == "right":
        mask[0, 8:] = False
        mask[2, 5:] = False
    assert_parity(model, frames, mask, INSTRUCTIONS)


@pytest.mark.parametrize("fusion_type", ALL)
def test_parallel_equals_incremental_with_a_history_stride(fusion_type: str) -> None:
    """A strided window (6 steps, every 3rd frame) reads the same frames while training and
    acting, past the window's edge and with a padded row."""
    model = build(fusion_type, max_history=6, history_stride=3)
    batch, steps = 3, 11
    frames = random_frames(batch, steps, seed=4)
    mask = torch.ones(batch, steps, dtype=torch.bool)
    mask[1, :4] = False
    assert_parity(model, frames, mask, INSTRUCTIONS)


@pytest.mark.parametrize("fusion_type", ALL)
def test_a_stride_hides_the_frames_between(fusion_type: str) -> None:
    """With ``history_stride=2`` the action at step 5 does not depend on frames 4 and 2, and
    does on frame 3; without a stride it depends on frame 4."""
    strided = build(fusion_type, max_history=8, history_stride=2)
    frames = random_frames(1, 6, seed=5)
    with torch.no_grad():
        base = strided(frames, INSTRUCTIONS[:1]).logits[0, 5]
        for step, moves in ((4, False), (2, False), (3, True)):
            changed = frames.clone()
            changed[:, step] = 255 - changed[:, step]
            after = strided(changed, INSTRUCTIONS[:1]).logits[0, 5]
            assert (not torch.allclose(base, after, atol=1e-6)) == moves, step
        dense = build(fusion_type, max_history=8)
        changed = frames.clone()
        changed[:, 4] = 255 - changed[:, 4]
        assert not torch.allclose(
            dense(frames, INSTRUCTIONS[:1]).logits[0, 5], dense(changed, INSTRUCTIONS[:1]).logits[0, 5]
        )


def test_a_history_stride_outside_the_window_is_refused() -> None:
    for stride in (0, 9):
        with pytest.raises(ConfigError, match="history_stride must be between 1 and max_history=8"):
            make_tiny_config("cross_attention", max_history=8, history_stride=stride)


@pytest.mark.parametrize("fusion_type", ALL)
def test_padded_frames_change_nothing(fusion_type: str) -> None:
    model = build(fusion_type)
    frames = random_frames(2, 6, seed=2)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, :2] = False
    times = (mask.long().cumsum(1) - 1).clamp_min(0)
    changed = frames.clone()
    changed[~mask] = 255 - changed[~mask]
    with torch.no_grad():
        a = model(frames, INSTRUCTIONS[:2], times=times, frame_mask=mask).logits
        b = model(changed, INSTRUCTIONS[:2], times=times, frame_mask=mask).logits
    torch.testing.assert_close(a[mask], b[mask], atol=1e-6, rtol=0)


@pytest.mark.parametrize("fusion_type", ALL)
def test_causal_future_frames_change_nothing(fusion_type: str) -> None:
    model = build(fusion_type)
    frames = random_frames(1, 6, seed=3)
    later = frames.clone()
    later[:, 4:] = 0
    with torch.no_grad():
        a = model(frames, INSTRUCTIONS[:1]).logits
        b = model(later, INSTRUCTIONS[:1]).logits
    torch.testing.assert_close(a[:, :4], b[:, :4], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.parametrize("fusion_type", ["cross_attention", "self_attention"])
def test_attention_rows_sum_to_one_over_visible_history(fusion_type: str) -> None:
    model = build(fusion_type, max_history=3)
    with torch.no_grad():
        out = model(random_frames(1, 7), INSTRUCTIONS[:1], return_attention=True)
    weights = out.extras["attention"]  # (B, T, blocks, heads, T, P)
    total = weights.sum(dim=(-1, -2))
    if fusion_type == "self_attention":
        total = total  # mean over query tokens of rows that also give weight to the text token
        total = total + out.extras["text_attention"]
    torch.testing.assert_close(total, torch.ones_like(total))
    per_frame = weights.sum(-1)[0, :, 0, 0]  # (T_query, T_key)
    for t in range(7):
        visible = [j for j in range(7) if j <= t and t - j < 3]
        hidden = [j for j in range(7) if j not in visible]
        assert per_frame[t, hidden].abs().max() == 0


def test_visibility_rule() -> None:
    times = torch.tensor([[0, 1, 2, 3]])
    mask = torch.tensor([[True, True, False, True]])
    allowed = visibility(times, mask, window=2)[0]
    assert allowed.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [False, True, False, False],  # a padded query sees the visible history as usual
        [False, False, False, True],
    ]


@pytest.mark.parametrize("fusion_type", ["cross_attention", "gmu", "self_attention", "late"])
def test_overfit_one_batch(fusion_type: str) -> None:
    torch.manual_seed(0)
    model = InstructionPolicy(make_tiny_config(fusion_type))
    frames = random_frames(3, 8, seed=4)
    targets = torch.randint(0, 17, (3, 8), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        out = model(frames, INSTRUCTIONS)
        loss = -model.distribution(out.logits).log_prob(targets).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model.distribution(model(frames, INSTRUCTIONS).logits).mode()
    assert (predicted == targets).float().mean() >= 0.95, loss.item()


def test_instruction_changes_the_output() -> None:
    model = build("cross_attention")
    frames = random_frames(2, 3)
    with torch.no_grad():
        out = model(frames, ["collect wood", "eat a cow"]).logits
        same = model(frames, ["collect wood", "collect wood"]).logits
    assert not torch.allclose(out[1], same[1])
    torch.testing.assert_close(out[0], same[0])


def test_null_instruction_and_dropout() -> None:
    model = build("cross_attention")
    frames = random_frames(2, 3)
    with torch.no_grad():
        dropped = model(
            frames, ["collect wood", "eat a cow"], drop_instruction=torch.tensor([True, False])
        ).logits
        null = model(frames, [None, "eat a cow"]).logits
        empty = model(frames, ["", "eat a cow"]).logits
    torch.testing.assert_close(dropped, null)
    torch.testing.assert_close(null, empty)
    config = make_tiny_config().replace(instruction_dropout=0.5)
    torch.manual_seed(0)
    model = InstructionPolicy(config).train()
    text = model.encode_instructions(["collect wood"] * 64, drop=torch.rand(64) < 0.5)
    assert 10 < (text == model.null_instruction).all(-1).sum() < 54


def test_guidance_formula() -> None:
    cond = torch.randn(4, 17)
    uncond = torch.randn(4, 17)
    torch.testing.assert_close(guide(cond, uncond, 0.0, (17,)), cond)
    expected = 2.5 * cond.log_softmax(-1) - 1.5 * uncond.log_softmax(-1)
    torch.testing.assert_close(guide(cond, uncond, 1.5, (17,)), expected)


def test_multidiscrete_distribution() -> None:
    sizes = (2, 3, 11)
    logits = torch.randn(4, 5, sum(sizes))
    dist = FactorizedCategorical(logits, sizes)
    actions = dist.sample(torch.Generator().manual_seed(0))
    assert actions.shape == (4, 5, 3) and (actions < torch.tensor(sizes)).all()
    parts = logits.split(list(sizes), -1)
    expected = sum(
        p.log_softmax(-1).gather(-1, a[..., None]).squeeze(-1)
        for p, a in zip(parts, actions.unbind(-1), strict=True)
    )
    torch.testing.assert_close(dist.log_prob(actions), expected)
    assert dist.mode().shape == (4, 5, 3) and dist.entropy().shape == (4, 5)
    config = make_tiny_config().replace(action_space={"type": "MultiDiscrete", "sizes": list(sizes)})
    model = InstructionPolicy(config).eval()
    out = model(random_frames(2, 3), INSTRUCTIONS[:2])
    assert out.logits.shape == (2, 3, 16)


def test_seed_determinism_including_training() -> None:
    def train() -> torch.Tensor:
        torch.manual_seed(5)
        model = InstructionPolicy(make_tiny_config())
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(3):
            loss = model(random_frames(2, 4), INSTRUCTIONS[:2]).logits.square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(train(), train())


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = build("gmu")
    frames = random_frames(2, 4)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = InstructionPolicy.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(frames, INSTRUCTIONS[:2]).logits, model(frames, INSTRUCTIONS[:2]).logits, atol=0, rtol=0
        )
    model.save_pretrained(tmp_path / "ckpt")  # overwriting keeps a valid checkpoint
    InstructionPolicy.from_pretrained(tmp_path / "ckpt")


def test_frozen_text_features_are_full_precision_even_when_first_met_under_autocast() -> None:
    """A training step under bf16 autocast and an evaluation in fp32 read the same cached text
    features: the frozen encoder always encodes in fp32."""
    config = PolicyConfig.from_dict(
        {**make_tiny_config().to_dict(), "text": {"encoder": "minilm", "pooling": "last"}}
    )
    model = InstructionPolicy(config).eval()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            first = model.text_encoder(["collect wood"])
        model.text_encoder._cache.clear()
        plain = model.text_encoder(["collect wood"])
    assert first.dtype == plain.dtype == torch.float32
    torch.testing.assert_close(first, plain, rtol=0, atol=0)


def test_pretrained_text_encoder_is_frozen_cached_and_not_saved(tmp_path: Path) -> None:
    config = PolicyConfig.from_dict(
        {**make_tiny_config().to_dict(), "text": {"encoder": "minilm", "pooling": "last"}}
    )
    model = InstructionPolicy(config).eval()
    assert not any(p.requires_grad for p in model.text_encoder.backbone.parameters())
    calls = []
    original = model.text_encoder._encode
    model.text_encoder._encode = lambda texts: calls.append(list(texts)) or original(texts)
    text = model.encode_instructions(["collect wood", "eat a cow", "collect wood"])
    model.encode_instructions(["eat a cow"])
    assert calls == [["collect wood", "eat a cow"]]  # de-duplicated, then cached
    torch.testing.assert_close(text[0], text[2])
    model.save_pretrained(tmp_path / "c")
    from safetensors.torch import load_file

    assert not any(
        k.startswith("text_encoder.backbone.") for k in load_file(str(tmp_path / "c" / "model.safetensors"))
    )
    loaded = InstructionPolicy.from_pretrained(tmp_path / "c").eval()
    frames = random_frames(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames, ["eat a cow"]).logits, model(frames, ["eat a cow"]).logits)


def test_last_token_pooling_is_mask_aware() -> None:
    from policies.text import pool_tokens

    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    assert pool_tokens(hidden, mask, "last").flatten().tolist() == [1.0, 7.0]
    assert pool_tokens(hidden, mask, "mean").flatten().tolist() == [0.5, 5.5]
    assert pool_tokens(hidden, mask, "cls").flatten().tolist() == [0.0, 4.0]


def test_pickle_checkpoint_is_refused(tmp_path: Path) -> None:
    model = build("cross_attention")
    (tmp_path / "old").mkdir()
    torch.save(model.state_dict(), tmp_path / "old" / "pytorch_model.bin")
    (tmp_path / "old" / "config.json").write_text(json.dumps({"policy": model.config.to_dict()}))
    with pytest.raises(CheckpointError, match=r"pickle-based weights \['pytorch_model.bin'\].*refused"):
        InstructionPolicy.from_pretrained(tmp_path / "old")


def test_mismatched_checkpoint_errors(tmp_path: Path) -> None:
    model = build("cross_attention")
    model.save_pretrained(tmp_path / "c")
    with pytest.raises(
        CheckpointError,
        match=r"trained for action space \{'type': 'Discrete', 'n': 17\} but the env has \{'type': 'Discrete', 'n': 7\}",
    ):
        model.check_action_space({"type": "Discrete", "n": 7})
    config_path = tmp_path / "c" / "config.json"
    payload = json.loads(config_path.read_text())
    payload["policy"]["fusion_kwargs"]["fusion_type"] = "gmu"
    config_path.write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="does not match"):
        InstructionPolicy.from_pretrained(tmp_path / "c")


def test_config_json_round_trip_and_validation() -> None:
    config = make_tiny_config("film")
    assert PolicyConfig.from_json(config.to_json()) == config
    data = config.to_dict()
    data["fusion_kwargs"]["proj_dim"] = 8
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['fusion_kwargs.proj_dim'\]"):
        PolicyConfig.from_dict(data)
    with pytest.raises(ConfigError, match="projection_dim=30 must be divisible by num_heads=4"):
        make_tiny_config().replace(**{"fusion_kwargs.projection_dim": 30, "fusion_kwargs.num_heads": 4})
    with pytest.raises(ConfigError, match="fusion_type must be one of"):
        make_tiny_config().replace(**{"fusion_kwargs.fusion_type": "magic"})
    with pytest.raises(ConfigError, match=r"frame_tokens must be a square number .* got 5"):
        make_tiny_config().replace(**{"vision.frame_tokens": 5})
    with pytest.raises(ConfigError, match="sizes for Discrete must hold one size"):
        ActionSpaceConfig("Discrete", (3, 4))


def test_bad_frames_get_a_clear_error() -> None:
    model = build("cross_attention")
    with pytest.raises(
        ValueError, match=r"expected frames \(N, H, W, 3\) uint8, got \(2, 16, 16, 3\) torch.float32"
    ):
        model(random_frames(1, 2).float(), ["x"])


def test_import_policies_loads_no_gymnasium_or_sb3() -> None:
    code = "import sys, policies, policies.policy; print(sorted(m for m in ('gymnasium', 'stable_baselines3', 'envs') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("fusion_type", ["cross_attention", "self_attention", "pooling"])
def test_parity_through_cache_growth_and_wrap(fusion_type: str) -> None:
    """The cache starts at 16 frames, doubles up to max_history=20, then wraps around."""
    model = build(fusion_type, max_history=20)
    frames = random_frames(2, 45, seed=7)
    with torch.no_grad():
        parallel = model(frames, INSTRUCTIONS[:2])
        state = model.initial_state(INSTRUCTIONS[:2])
        for t in range(45):
            step = model.step(state, frames[:, t])
            torch.testing.assert_close(step.logits, parallel.logits[:, t], atol=1e-5, rtol=0)
    ring = state.fusion["rings"][0] if isinstance(state.fusion, dict) else state.fusion
    ring = ring[0] if isinstance(ring, list) else ring
    assert ring.capacity == 20


@pytest.mark.parametrize("fusion_type", ALL)
def test_reset_rows_starts_a_fresh_episode_in_those_rows_only(fusion_type: str) -> None:
    """Row 1 starts a new episode with a new instruction at step 6 (vectorized rollouts);
    afterwards it matches a fresh single-episode run, and rows 0 and 2 are untouched."""
    model = build(fusion_type, max_history=4)
    frames = random_frames(3, 10, seed=3)
    with torch.no_grad():
        whole = model(frames, INSTRUCTIONS)
        fresh = model(frames[1:2, 6:], ["find water and drink"])
        state = model.initial_state(INSTRUCTIONS)
        for t in range(10):
            if t == 6:
                rows = torch.tensor([False, True, False])
                model.reset_rows(state, rows, [None, "find water and drink", None])
            out = model.step(state, frames[:, t])
            torch.testing.assert_close(out.logits[0], whole.logits[0, t], atol=1e-5, rtol=0)
            torch.testing.assert_close(out.logits[2], whole.logits[2, t], atol=1e-5, rtol=0)
            expected = whole.logits[1, t] if t < 6 else fresh.logits[0, t - 6]
            torch.testing.assert_close(out.logits[1], expected, atol=1e-5, rtol=0)
    assert state.time.tolist() == [10, 4, 10]


def test_context_mask_changes_outputs_not_at_all_and_stops_encoder_gradients() -> None:
    model = build("cross_attention").train()
    frames = random_frames(2, 6, seed=9)
    context = torch.zeros(2, 6, dtype=torch.bool)
    context[:, :3] = True
    plain = model(frames, INSTRUCTIONS[:2])
    masked = model(frames, INSTRUCTIONS[:2], context_mask=context)
    torch.testing.assert_close(masked.logits, plain.logits, atol=1e-6, rtol=0)
    # Loss on the context steps alone reaches the encoder only through non-context frames: none.
    masked.logits[:, :3].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in model.frame_encoder.parameters())
    # Positive control: a loss on the later steps does reach the encoder (through frames 3-5).
    model.zero_grad()
    model(frames, INSTRUCTIONS[:2], context_mask=context).logits[:, 3:].sum().backward()
    assert all(p.grad is not None and p.grad.any() for p in model.frame_encoder.parameters())


@pytest.mark.parametrize("fusion_type", ALL)
def test_forward_and_backward_under_bf16_autocast(fusion_type: str) -> None:
    """What BC does on CUDA (train.amp), checked on the CPU's autocast: mixed dtypes must meet."""
    model = build(fusion_type).train()
    frames = random_frames(2, 5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, :2] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(
            frames, ["collect wood", ""], frame_mask=mask, drop_instruction=torch.tensor([True, False])
        )
    loss = out.logits.float().logsumexp(-1).mean() + out.value.float().square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    # Both rows use the null instruction (one dropped, one empty): only the text path may idle.
    text_path = ("text_encoder.", "text_projector.", "query_time.")
    idle = [name for name, p in trained if p.grad is None and not name.startswith(text_path)]
    assert not idle, idle
    for name, parameter in trained:
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name
    # The same forward in float32 (autocast off) agrees within bf16 rounding.
    with torch.no_grad():
        full = model(
            frames, ["collect wood", ""], frame_mask=mask, drop_instruction=torch.tensor([True, False])
        )
    torch.testing.assert_close(out.logits.float()[mask], full.logits[mask], atol=1e-2, rtol=0)


@pytest.mark.parametrize("fusion_type", ["cross_attention", "self_attention", "gmu"])
def test_prefill_equals_stepping(fusion_type: str) -> None:
    model = build(fusion_type, max_history=4)
    frames = random_frames(2, 7, seed=5)
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, :3] = False  # a shorter history, right-aligned
    with torch.no_grad():
        stepped = model.initial_state(INSTRUCTIONS[:2])
        stepped.time = torch.tensor([10, 40])
        for k in range(7):
            model.step(stepped, frames[:, k], valid[:, k])
        filled = model.initial_state(INSTRUCTIONS[:2])
        filled.time = torch.tensor([10, 40])
        model.prefill(filled, frames, valid, encode_steps=3)  # in pieces
        assert filled.time.tolist() == stepped.time.tolist() == [17, 44]
        last = random_frames(2, 1, seed=6)[:, 0]
        torch.testing.assert_close(
            model.step(filled, last).logits, model.step(stepped, last).logits, atol=1e-5, rtol=0
        )


def test_checkpoints_from_before_the_encoder_choice_load_as_impala_without_positions(tmp_path: Path) -> None:
    """A checkpoint written before ``vision.encoder`` and ``vision.position_embedding`` existed
    holds neither field: it was an IMPALA stack without token positions, whatever today's
    defaults are, and it loads with the same outputs."""
    torch.manual_seed(0)
    old = make_tiny_config().replace(**{"vision.encoder": "impala", "vision.position_embedding": False})
    model = InstructionPolicy(old).eval()
    model.save_pretrained(tmp_path / "old")
    config_path = tmp_path / "old" / "config.json"
    payload = json.loads(config_path.read_text())
    vision = payload["policy"]["vision"]
    del vision["encoder"], vision["position_embedding"], vision["token_pooling"]
    config_path.write_text(json.dumps(payload))
    loaded = InstructionPolicy.from_pretrained(tmp_path / "old").eval()
    assert loaded.config.vision.encoder == "impala" and not loaded.config.vision.position_embedding
    assert loaded.config.vision.token_pooling == "average"
    assert PolicyConfig().vision.encoder == "cells" and PolicyConfig().vision.position_embedding
    frames = random_frames(1, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames, ["go"]).logits, model(frames, ["go"]).logits)


def test_merged_tokens_are_their_patch_features_side_by_side_and_averaged_ones_their_mean() -> None:
    """token_pooling="merge": token (i, j) of a 3x3 merge of the 9x9 cell grid holds the nine
    cells' features of patch (i, j) in row-major order; "average" holds their mean. A wrong
    rearrangement (cells from other patches, or channels interleaved) fails here."""
    from policies.vision import FrameEncoder

    torch.manual_seed(0)
    base = VisionConfig(encoder="cells", cell_size=7, channels=(8,), frame_tokens=81)
    full = FrameEncoder(base).eval()
    merged = FrameEncoder(dataclasses.replace(base, frame_tokens=9, token_pooling="merge")).eval()
    averaged = FrameEncoder(dataclasses.replace(base, frame_tokens=9, token_pooling="average")).eval()
    merged.load_state_dict(full.state_dict())
    averaged.load_state_dict(full.state_dict())
    frames = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        grid = full(frames).reshape(2, 9, 9, 8)  # (N, row, col, C)
        tokens, means = merged(frames), averaged(frames)
    assert merged.output_dim == 72 and tokens.shape == (2, 9, 72) and means.shape == (2, 9, 8)
    for i in range(3):
        for j in range(3):
            patch = grid[:, 3 * i : 3 * i + 3, 3 * j : 3 * j + 3]  # (N, 3, 3, C)
            torch.testing.assert_close(tokens[:, 3 * i + j], patch.reshape(2, 72))
            torch.testing.assert_close(means[:, 3 * i + j], patch.mean(dim=(1, 2)))


def test_a_cell_token_reads_its_cell_and_never_the_pixels_past_the_last_whole_cell() -> None:
    """With no residual blocks, cell token (r, c) is a function of the 7x7 pixels of cell (r, c)
    only; the 64th row and column (64 = 9 * 7 + 1) reach no token."""
    from policies.vision import FrameEncoder

    torch.manual_seed(0)
    encoder = FrameEncoder(
        VisionConfig(encoder="cells", cell_blocks=0, channels=(8,), frame_tokens=81)
    ).eval()
    frames = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8)
    edited = frames.clone()
    edited[:, 63, :] = 255 - edited[:, 63, :]
    edited[:, :, 63] = 255 - edited[:, :, 63]
    with torch.no_grad():
        torch.testing.assert_close(encoder(edited), encoder(frames), rtol=0, atol=0)
        one_cell = frames.clone()
        one_cell[:, 14:21, 28:35] = 255 - one_cell[:, 14:21, 28:35]  # cell (2, 4)
        changed = (encoder(one_cell) != encoder(frames)).any(-1)[0]
    assert changed.nonzero().flatten().tolist() == [2 * 9 + 4]


def test_merge_pooling_needs_a_grid_that_splits_evenly() -> None:
    with pytest.raises(
        ConfigError, match=r"token_pooling='merge' needs the 9x9 feature grid .* \(frame_tokens=4\)"
    ):
        VisionConfig(encoder="cells", cell_size=7, frame_tokens=4, token_pooling="merge")
    with pytest.raises(ConfigError, match="token_pooling must be one of"):
        VisionConfig(token_pooling="max")
    model = InstructionPolicy(make_tiny_config().replace(**{"vision.token_pooling": "merge"}))
    assert model(random_frames(1, 2), ["go"]).logits.shape[:2] == (1, 2)
