"""Which frames an action is chosen from: the visibility rule of the parallel path (training)
and the history ring of the incremental path (acting). A policy that saw a padded frame, a
future frame, or a frame older than ``max_history`` would act on what it should not know, and
the two paths would disagree."""

from __future__ import annotations

import torch

from policies.fusion.base import HistoryRing, gather_steps, visibility


def _reference(times: list[int], real: list[bool], window: int, stride: int = 1) -> list[list[bool]]:
    """The rule as the docs state it: step i sees frame j iff j is real, j <= i,
    times[i] - times[j] < window and a multiple of the stride; a query that would see nothing
    sees itself."""
    rows = []
    for i in range(len(times)):
        row = [
            real[j] and j <= i and times[i] - times[j] < window and (times[i] - times[j]) % stride == 0
            for j in range(len(times))
        ]
        if not any(row):
            row[i] = True
        rows.append(row)
    return rows


def test_visibility_is_causal_real_frames_within_the_window() -> None:
    """Each row of a batch follows the rule on its own: the window edge (a frame exactly
    ``window`` steps old is forgotten, one step younger is seen), padding on either side, gaps in
    the times (packed episodes), and a padded query with nothing to see sees only itself."""
    times = torch.tensor([[0, 1, 2, 3, 4, 5], [3, 4, 5, 9, 10, 11], [0, 1, 2, 3, 4, 5]])
    real = torch.tensor(
        [
            [True, True, True, True, True, True],
            [False, True, True, True, False, True],
            [False, False, True, True, True, True],  # left padding
        ]
    )
    window = 3
    allowed = visibility(times, real, window)
    assert allowed.dtype == torch.bool and allowed.shape == (3, 6, 6)
    for row in range(3):
        expected = _reference(times[row].tolist(), real[row].tolist(), window)
        assert allowed[row].tolist() == expected, row
    assert allowed[0, 3].tolist() == [False, True, True, True, False, False]  # frame 0 is 3 steps old
    assert allowed[2, 0].tolist() == [True, False, False, False, False, False]  # padded, sees itself
    assert allowed[1, 4].tolist() == [False, False, False, True, False, False]  # padded, sees history


def test_a_window_of_one_sees_only_the_current_frame() -> None:
    """``max_history=1``: a memoryless policy, each step sees its own frame and nothing else."""
    times = torch.arange(4)[None]
    allowed = visibility(times, torch.ones(1, 4, dtype=torch.bool), 1)
    assert torch.equal(allowed[0], torch.eye(4, dtype=torch.bool))


def test_a_stride_sees_only_frames_a_multiple_of_it_back() -> None:
    """``history_stride=3`` with a 7-step window: step 6 sees frames 6, 3 and 0; step 7 sees 7, 4,
    1; packed episodes (time gaps) and padding follow the same rule as without a stride."""
    times = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 10, 11, 12, 13]])
    real = torch.tensor([[True] * 8, [True, True, False, True, True, True, True, True]])
    allowed = visibility(times, real, 7, stride=3)
    for row in range(2):
        assert allowed[row].tolist() == _reference(times[row].tolist(), real[row].tolist(), 7, 3), row
    assert allowed[0, 6].nonzero().flatten().tolist() == [0, 3, 6]
    assert allowed[0, 7].nonzero().flatten().tolist() == [1, 4, 7]  # frame 0 is 7 steps old: forgotten
    assert allowed[1, 7].nonzero().flatten().tolist() == [4, 7]  # times 10 and 13; time 3 is 10 back
    assert torch.equal(visibility(times, real, 7, stride=1), visibility(times, real, 7))


def test_the_ring_applies_the_stride_as_the_parallel_rule_does() -> None:
    """While acting, a strided ring shows a query the same frames the parallel rule shows it."""
    window, stride = 9, 4
    ring = HistoryRing(1, window, 1, torch.device("cpu"), stride=stride)
    times = list(range(20))
    parallel = visibility(torch.tensor([times]), torch.ones(1, 20, dtype=torch.bool), window, stride)[0]
    for time in times:
        _append(ring, [time], [True])
        seen = [t for t, _ in _visible_history(ring, torch.tensor([time]))[0]]
        assert seen == parallel[time].nonzero().flatten().tolist(), time
    assert seen == [11, 15, 19]


def test_gather_steps_picks_each_rows_steps_with_their_trailing_axes() -> None:
    """The steps a loss or a reader needs, per row, in the order asked, every trailing axis kept."""
    values = torch.arange(2 * 5 * 3 * 2).reshape(2, 5, 3, 2)
    index = torch.tensor([[4, 0], [1, 1]])
    picked = gather_steps(values, index)
    assert picked.shape == (2, 2, 3, 2)
    assert torch.equal(picked[0, 0], values[0, 4]) and torch.equal(picked[0, 1], values[0, 0])
    assert torch.equal(picked[1, 0], values[1, 1]) and torch.equal(picked[1, 1], values[1, 1])


def _visible_history(
    ring: HistoryRing, time: torch.Tensor, name: str = "value"
) -> list[list[tuple[int, int]]]:
    """Per row, the (time, value) of each visible frame (tokens carry value = 10 * time + token)."""
    visible = ring.visible(time)
    stored = ring.get(name)
    if ring.slot_dims[name] == 2:
        stored = stored[:, 0]  # (B, H, S, d): every head holds the same value here
    out = []
    for row in range(visible.shape[0]):
        slots = visible[row].nonzero().flatten().tolist()
        seen = {(int(ring.slot_time[row, s]), int(stored[row, s, 0])) for s in slots}
        out.append(sorted(seen))
    return out


def _expected_history(frames: list[list[int]], time: int, window: int, tokens: int) -> list[tuple[int, int]]:
    return sorted(
        (t, 10 * t + token) for t in frames[-window:] if time - t < window for token in range(tokens)
    )


def _drive_ring(slot_dim: int) -> None:
    batch, window, tokens = 3, 5, 2
    ring = HistoryRing(batch, window, tokens, torch.device("cpu"), initial_frames=2)
    assert ring.capacity == 2
    frames: list[list[int]] = [[] for _ in range(batch)]  # each row's real frame times
    # Rows step together first (the fast path), then row 1 skips steps and row 2 restarts.
    schedule = [[True, True, True]] * 3 + [[True, False, True], [True, False, True], [True, True, False]]
    schedule += [[True, True, True]] * 6
    capacities = []
    for time, valid_list in enumerate(schedule):
        if time == 8:
            ring.reset(torch.tensor([False, False, True]))
            frames[2] = []
        valid = torch.tensor(valid_list)
        value = (10 * time + torch.arange(tokens)).float()[None, :, None].expand(batch, tokens, 1)
        if slot_dim == 2:
            value = value[:, None].expand(batch, 2, tokens, 1)  # (B, H, P, d)
        ring.append(torch.full((batch,), time), valid, slot_dim=slot_dim, value=value.clone())
        for row in range(batch):
            if valid_list[row]:
                frames[row].append(time)
        capacities.append(ring.capacity)
        now = torch.full((batch,), time)
        seen = _visible_history(ring, now)
        for row in range(batch):
            assert seen[row] == _expected_history(frames[row], time, window, tokens), (time, row)
        if time < 8:  # attention reads only the slots of the fullest row
            assert ring.filled == min(max(len(f) for f in frames), window) * tokens
    # Capacity doubles from the initial size and stops at the window.
    assert capacities[:3] == [2, 2, 4] and max(capacities) == window
    assert ring.count.tolist() == [12, 10, 4]


def test_history_ring_holds_each_rows_last_window_of_real_frames() -> None:
    """While acting, each row's query sees exactly its last ``max_history`` real frames (with
    their times), whether rows step together or not, through growth and wrap-around, and a reset
    row starts an empty history while the others keep theirs."""
    _drive_ring(slot_dim=1)


def test_history_ring_keeps_attention_keys_in_their_own_layout() -> None:
    """Attention keys are stored (B, H, S, d) so attention reads them without a copy; the ring
    holds the same frames in that layout."""
    _drive_ring(slot_dim=2)


def test_a_query_forgets_frames_older_than_the_window_even_before_they_are_overwritten() -> None:
    """A row that stopped receiving frames still forgets them as its query time moves on."""
    ring = HistoryRing(1, 4, 1, torch.device("cpu"))
    for time in range(3):
        ring.append(torch.tensor([time]), torch.tensor([True]), value=torch.full((1, 1, 1), float(time)))
    assert ring.visible(torch.tensor([2])).tolist() == [[True, True, True]]
    assert ring.visible(torch.tensor([4])).tolist() == [[False, True, True]]
    assert ring.visible(torch.tensor([6])).tolist() == [[False, False, False]]


def test_ring_size_is_reported_from_what_it_holds() -> None:
    """``state_nbytes`` (shown by the memory benchmark) counts every stored tensor and grows with
    the history."""
    ring = HistoryRing(2, 8, 3, torch.device("cpu"), initial_frames=2)
    ring.append(torch.tensor([0, 0]), torch.tensor([True, True]), value=torch.zeros(2, 3, 4))
    small = ring.nbytes()
    expected = 2 * 6 * 4 * 4 + 2 * 6 * 8 + 2 * 6 * 1  # float values, long times, bool flags
    assert small == expected
    for time in range(1, 5):
        ring.append(torch.tensor([time, time]), torch.tensor([True, True]), value=torch.zeros(2, 3, 4))
    assert ring.nbytes() > small


def test_the_mask_is_built_on_the_device_of_the_times() -> None:
    """A GPU run's masks live on the GPU with its times: every part of the rule (causal, window,
    padding, the self-fallback) is made on the times' device. The meta device stands in for a
    GPU here: mixing it with a CPU tensor fails as mixing CUDA and CPU would."""
    meta = torch.device("meta")
    times = torch.arange(5, device=meta)[None].expand(2, 5)
    allowed = visibility(times, torch.ones(2, 5, dtype=torch.bool, device=meta), 3)
    assert allowed.device == meta and allowed.shape == (2, 5, 5)


def test_history_ring_starts_with_room_for_16_frames_or_the_window() -> None:
    """Short histories stay small: a ring holds 16 frames until it needs more (fewer when the
    window is shorter), then doubles."""
    ring = HistoryRing(1, 100, 1, torch.device("cpu"))
    assert ring.capacity == 16 and ring.slot_time.shape == (1, 16)
    assert HistoryRing(1, 8, 1, torch.device("cpu")).capacity == 8
    for time in range(17):
        ring.append(torch.tensor([time]), torch.tensor([True]), value=torch.zeros(1, 1, 1))
    assert ring.capacity == 32


def _append(ring: HistoryRing, times: list[int], valid: list[bool]) -> None:
    value = torch.tensor(times, dtype=torch.float)[:, None, None] * 10  # one token: 10 * time
    ring.append(torch.tensor(times), torch.tensor(valid), value=value)


def test_a_padded_step_leaves_a_full_rows_oldest_frame_visible() -> None:
    """A row with no frame this step (valid=False) keeps its whole history, also when its window
    is full and the slot the next frame would take still holds its oldest visible frame."""
    ring = HistoryRing(2, 3, 1, torch.device("cpu"))
    for time in range(3):
        _append(ring, [time, time], [True, True])
    _append(ring, [3, 3], [True, False])
    seen = _visible_history(ring, torch.tensor([3, 2]))
    assert seen == [[(1, 10), (2, 20), (3, 30)], [(0, 0), (1, 10), (2, 20)]]


def test_after_a_reset_frames_of_the_new_episode_never_overwrite_each_other() -> None:
    """Rows restarted together or alone, then stepping together, then one padded: each row's
    new episode keeps every frame it was given (the fast and the general path agree on where a
    row's next frame goes)."""
    ring = HistoryRing(2, 4, 1, torch.device("cpu"))
    for time in range(2):
        _append(ring, [time, time], [True, True])
    ring.reset(torch.tensor([True, True]))  # both rows start new episodes
    _append(ring, [5, 5], [True, True])
    _append(ring, [6, 6], [True, True])
    _append(ring, [7, 7], [True, False])
    assert _visible_history(ring, torch.tensor([7, 6])) == [[(5, 50), (6, 60), (7, 70)], [(5, 50), (6, 60)]]

    ring = HistoryRing(2, 4, 1, torch.device("cpu"))
    for time in range(2):
        _append(ring, [time, time], [True, True])
    ring.reset(torch.tensor([False, True]))  # only row 1 starts a new episode
    _append(ring, [2, 10], [True, True])
    _append(ring, [3, 11], [True, True])
    _append(ring, [4, 12], [False, True])
    seen = _visible_history(ring, torch.tensor([3, 12]))
    assert seen == [[(0, 0), (1, 10), (2, 20), (3, 30)], [(10, 100), (11, 110), (12, 120)]]
