"""The RL loop with a stub trainer: it calls the phases in order, counts progress in samples as they are drawn
(resumed runs start where they stopped), shows the phase, and hides the bar with --disable_progress_bar."""

from __future__ import annotations

import pytest

from repulse.distributed.strategy import SingleProcessStrategy
from repulse.infra.metrics import MetricLogger
from repulse.trainers.guard import Guard
from repulse.trainers.rl import loop
from repulse.trainers.rl.loop import RLLoopSettings, RLLoopState, run_rl_loop
from repulse.trainers.rl.steps import Metrics, Progress


class StubTrainer:
    """Two rounds per step (like RePULSe with --num_episodes 2): each draws 3 samples per prompt, two at a time."""

    def __init__(self) -> None:
        self.progress, self.calls, self.seen = Progress(), [], []

    def rounds(self):
        return ("proposal", "both")

    def samples_per_prompt(self) -> int:
        return 6

    def make_experience(self, prompt_ids, step, kind):
        self.calls.append(("make_experience", step, kind))
        self.progress.phase(f"sampling {kind}")
        rows = 3 * len(prompt_ids)
        while rows:
            self.progress.sampled(min(2, rows))
            rows -= min(2, rows)
        self.seen.append(self.progress.bar.n)
        return kind

    def update(self, experience):
        self.calls.append(("update", experience))
        self.progress.phase("updating 1/1")
        return Metrics(loss=[1.0])

    def report(self, experience, updates):
        self.calls.append(("report", experience, len(updates)))
        return {"reward_mean": 0.5, "loss": updates[-1].mean()["loss"]}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def run(tmp_path, *, progress: bool = True, state: RLLoopState | None = None) -> StubTrainer:
    trainer = StubTrainer()
    settings = RLLoopSettings(episodes=2, prompts_per_step=2, progress=progress)
    logger = MetricLogger(str(tmp_path), enabled=False)
    run_rl_loop(trainer, [[1], [2], [3]], settings, logger, Guard(SingleProcessStrategy("cpu")), state=state)
    return trainer


def test_phases_in_order_and_progress_in_samples(tmp_path, capsys):
    trainer = run(tmp_path)
    # 3 prompts, 2 per step: batches of 2 and 1, twice (episodes) -> 4 steps
    assert trainer.calls[:5] == [
        ("make_experience", 0, "proposal"),
        ("update", "proposal"),
        ("make_experience", 0, "both"),
        ("update", "both"),
        ("report", "both", 2),
    ]
    assert [c[1] for c in trainer.calls if c[0] == "make_experience"] == [0, 0, 1, 1, 2, 2, 3, 3]
    # 6 samples per prompt per step: 12, 6, 12, 6; the bar moves as each round draws
    assert trainer.seen == [6, 12, 15, 18, 24, 30, 33, 36]
    bar = capsys.readouterr().err
    assert "36/36" in bar and "sample" in bar and "reward 0.500" in bar


def test_a_resumed_run_counts_from_its_step(tmp_path, capsys):
    trainer = run(tmp_path, state=RLLoopState(global_step=2))
    assert [c[1] for c in trainer.calls if c[0] == "make_experience"] == [2, 2, 3, 3]
    assert trainer.seen[0] == 18 + 6


def test_disable_progress_bar_hides_it(tmp_path, capsys):
    run(tmp_path, progress=False)
    assert "sample" not in capsys.readouterr().err


@pytest.mark.parametrize("kinds", [("policy",), ("proposal", "proposal", "both")])
def test_train_step_makes_and_updates_each_round_then_reports(kinds):
    calls = []

    class Trainer(StubTrainer):
        def rounds(self):
            return kinds

        def make_experience(self, prompt_ids, step, kind):
            calls.append(kind)
            return kind

    metrics = loop.train_step(Trainer(), [[1]], 0)
    assert calls == list(kinds) and metrics["loss"] == 1.0


def test_rank_share_splits_a_step_into_equal_contiguous_shares():
    from repulse.trainers.rl.loop import rank_share

    assert [rank_share([5, 6, 7, 8], r, 2) for r in (0, 1)] == [([5, 6], 0), ([7, 8], 2)]
    # a batch that does not divide is padded with its first prompts, as DistributedSampler pads
    assert [rank_share([5, 6, 7], r, 2) for r in (0, 1)] == [([5, 6], 0), ([7, 5], 2)]
    assert [rank_share([9], r, 2) for r in (0, 1)] == [([9], 0), ([9], 1)]
    assert rank_share([5, 6, 7], 0, 1) == ([5, 6, 7], 0)


def test_streams_give_each_call_of_a_step_its_own_seed():
    from repulse.trainers.rl.steps import Streams

    streams = Streams(seed=1)
    first, second = streams.next_call(0, "p"), streams.next_call(0, "q")
    again = Streams(seed=1).next_call(0, "p")
    assert first["seed"] == again["seed"] and first["seed"] != second["seed"]
    assert streams.next_call(1, "p")["seed"] not in (first["seed"], second["seed"])
    assert Streams().next_call(0, "p")["seed"] is None  # torch's global stream
