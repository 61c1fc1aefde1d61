"""The BC learning-rate schedule at each phase, and what BC does with the problems `data check`
finds before step 1."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest

from envs.data.store import DatasetError, Problem
from train.bc import check_dataset, lr_lambda


def test_warm_up_rises_linearly_to_the_full_rate() -> None:
    """``train.warmup_steps``: step s of the warm-up trains at (s + 1) / warmup of ``train.lr``,
    so the first step is never at rate 0 and the last warm-up step reaches the full rate."""
    assert [lr_lambda(step, 4, 100, 0.1) for step in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_after_warm_up_the_rate_decays_on_a_cosine_to_the_floor() -> None:
    """``train.min_lr_ratio``: from the end of the warm-up the rate follows half a cosine, from
    the full rate down to the floor at ``train.steps``, through the midpoint halfway."""
    warmup, total, floor = 10, 110, 0.2
    assert lr_lambda(warmup, warmup, total, floor) == pytest.approx(1.0)
    assert lr_lambda(60, warmup, total, floor) == pytest.approx(floor + (1 - floor) / 2)
    quarter = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi / 4))
    assert lr_lambda(35, warmup, total, floor) == pytest.approx(quarter)
    assert lr_lambda(total, warmup, total, floor) == pytest.approx(floor)
    rates = [lr_lambda(step, warmup, total, floor) for step in range(warmup, total + 1)]
    assert all(later < earlier for earlier, later in itertools.pairwise(rates))


def test_steps_past_the_end_stay_at_the_floor() -> None:
    """A resumed run that goes past ``train.steps`` keeps training at the floor rate; the cosine
    does not swing back up."""
    assert lr_lambda(150, 10, 110, 0.2) == pytest.approx(0.2)
    assert lr_lambda(10_000, 0, 100, 0.05) == pytest.approx(0.05)


def test_no_warm_up_starts_at_the_full_rate() -> None:
    """``train.warmup_steps=0``: step 0 trains at the full rate, then decays."""
    assert lr_lambda(0, 0, 100, 0.0) == pytest.approx(1.0)
    assert lr_lambda(50, 0, 100, 0.0) == pytest.approx(0.5)
    assert lr_lambda(100, 0, 100, 0.0) == pytest.approx(0.0, abs=1e-12)


def test_a_run_no_longer_than_its_warm_up_reaches_the_floor_one_step_later() -> None:
    """``train.steps`` <= ``train.warmup_steps`` leaves no room to decay: the step after the
    warm-up is at the full rate and the next at the floor, with no division by zero."""
    assert lr_lambda(5, 5, 5, 0.3) == pytest.approx(1.0)
    assert lr_lambda(6, 5, 5, 0.3) == pytest.approx(0.3)
    assert lr_lambda(6, 5, 3, 0.3) == pytest.approx(0.3)


class _Checked:
    """A dataset whose `data check` reports ``problems``."""

    def __init__(self, problems: list[str], episodes: int = 6) -> None:
        self.problems, self.episodes = problems, episodes
        self.root = Path("demos")

    def check(self) -> list[Problem]:
        """Each line as the store reports it: tied to the episode it names, if any."""
        found = [re.search(r"\(episode (\d+)\)", line) for line in self.problems]
        return [
            Problem(int(match.group(1)) if match else None, line)
            for match, line in zip(found, self.problems, strict=True)
        ]

    def __len__(self) -> int:
        return self.episodes


def test_a_clean_dataset_trains_on_every_episode() -> None:
    """No problems: nothing is left out, with or without ``train.skip_bad_episodes``."""
    assert check_dataset(_Checked([]), skip_bad=False) == []  # type: ignore[arg-type]
    assert check_dataset(_Checked([]), skip_bad=True) == []  # type: ignore[arg-type]


def test_bad_episodes_stop_the_run_with_the_problems_and_the_remedies() -> None:
    """Without ``train.skip_bad_episodes`` BC refuses before step 1: the message counts the
    problems and episodes, lists the first five and how many more, names `data check` and says
    how many episodes skipping would keep."""
    problems = [f"demos/episodes/{n}.npz (episode {n}) is corrupt" for n in (7, 1, 3, 9, 2, 4, 1)]
    with pytest.raises(DatasetError) as caught:
        check_dataset(_Checked(problems, episodes=12), skip_bad=False)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "demos is corrupt or truncated: 7 problem(s) in 12 episodes, found before training" in message
    for line in problems[:5]:
        assert f"\n  {line}" in message
    assert "(episode 4)" not in message  # the sixth problem is counted, not listed
    assert "... and 2 more" in message
    assert "Run `instructcraft data check demos` to list them all" in message
    assert "train.skip_bad_episodes=true to train on the other 6 episodes" in message  # 6 distinct bad


def test_skip_bad_episodes_leaves_out_each_bad_episode_once_in_order() -> None:
    """``train.skip_bad_episodes=true``: the episodes named by the problems are left out, each
    once, in order; five or fewer problems are listed without a count of more."""
    problems = ["x (episode 10) missing", "x (episode 2) bad checksum", "x (episode 10) truncated"]
    assert check_dataset(_Checked(problems, episodes=12), skip_bad=True) == [2, 10]  # type: ignore[arg-type]
    with pytest.raises(DatasetError) as caught:
        check_dataset(_Checked(problems, episodes=12), skip_bad=False)  # type: ignore[arg-type]
    assert "more" not in str(caught.value)
    assert "to train on the other 10 episodes" in str(caught.value)


def test_problems_not_tied_to_an_episode_cannot_be_skipped() -> None:
    """A damaged index or metadata file is not one episode: BC stops even with
    ``train.skip_bad_episodes=true`` and says why skipping cannot help."""
    problems = ["demos/index.jsonl line 3 is not JSON", "x (episode 1) missing"]
    with pytest.raises(DatasetError) as caught:
        check_dataset(_Checked(problems), skip_bad=True)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "(these problems are not tied to one episode, so they cannot be skipped)" in message
    assert "skip_bad_episodes=true to train" not in message
