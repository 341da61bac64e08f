"""The tracker's arithmetic and text, with a fake clock so every number is exact."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from technic.engine.eta import CHECKPOINTS, StagePrior
from technic.engine.progress import (
    SCAN_STAGES,
    TIME_PROGRESS_CAP,
    MultiStageProgressTracker,
    format_eta,
)

from tests.seed_contract import SEED_PROGRESS_FIELDS


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.49, "0s"),
        (0.5, "1s"),
        (45, "45s"),
        (59.4, "59s"),
        (59.5, "1m 0s"),
        (120.5, "2m 1s"),
        (90.3, "1m 30s"),
        (3599.4, "59m 59s"),
        (3599.5, "1h 0m"),
        (3720, "1h 2m"),
        (3689, "1h 1m"),
        (3690, "1h 2m"),
        (7199.6, "2h 0m"),
        (-5, "0s"),
    ],
)
def test_eta_text_rounds_half_up(seconds: float, text: str) -> None:
    assert format_eta(seconds) == text


def test_eta_text_of_nothing_is_none() -> None:
    assert format_eta(None) is None
    assert format_eta(float("nan")) is None


def make(clock: FakeClock, emitted: list[dict], **kwargs) -> MultiStageProgressTracker:
    return MultiStageProgressTracker(
        on_emit=emitted.append, clock=clock, wall_clock=lambda: 1.7e9, **kwargs
    )


def test_seed_example_arithmetic_is_right() -> None:
    """The seed's example says 51.5; 5 + 20 + 0.7 * 45 is 56.5."""
    clock, emitted = FakeClock(), []
    tracker = make(clock, emitted)
    for stage in ("universe_loading", "data_fetching"):
        tracker.start_stage(stage, total=700)
        tracker.update(stage, 700)
        tracker.complete_stage(stage)
    tracker.start_stage("symbol_scanning", total=700)
    tracker.update("symbol_scanning", 315, "Scanning AAPL (315/700)")
    snap = tracker.snapshot()
    assert snap["overall_progress"] == pytest.approx(56.5)
    assert snap["stage_progress"] == pytest.approx(45.0)
    assert snap["stages"]["symbol_scanning"] == pytest.approx(
        snap["stages"]["symbol_scanning"] | {"weight": 0.70, "progress": 45.0, "current": 315}
    )
    assert snap["message"] == "Scanning AAPL (315/700)"
    assert snap["current_stage"] == "symbol_scanning"


def test_snapshot_has_every_seed_field() -> None:
    tracker = make(FakeClock(), [], scan_id="abc")
    snap = tracker.snapshot()
    extra = {"seq", "elapsed_seconds", "started_at", "completed_at", "error"}
    assert SEED_PROGRESS_FIELDS | extra <= set(snap)
    assert list(snap["stages"]) == [name for name, _ in SCAN_STAGES]
    for stage in snap["stages"].values():
        assert {
            "weight",
            "progress",
            "status",
            "current",
            "total",
            "duration",
            "throughput",
        } <= set(stage)
    assert snap["scan_id"] == "abc"


def test_eta_is_none_until_a_unit_is_done_then_extrapolates_the_stage() -> None:
    clock, emitted = FakeClock(), []
    tracker = make(clock, emitted, stages=(("only", 1.0),))
    tracker.start_stage("only", total=100)
    assert tracker.snapshot()["overall_eta"] is None
    assert tracker.snapshot()["stage_eta"] is None
    clock.now += 10
    tracker.update("only", 25)
    snap = tracker.snapshot()
    assert snap["stage_throughput"] == pytest.approx(2.5)
    assert snap["stage_eta"] == pytest.approx(30.0)
    assert snap["overall_eta"] == pytest.approx(30.0)
    assert snap["overall_eta_formatted"] == "30s"


def test_overall_eta_sums_each_stage_remaining_work_not_elapsed_over_progress() -> None:
    """A fast first stage must not make a slow second stage look fast."""
    clock, emitted = FakeClock(), []
    tracker = make(clock, emitted, stages=(("fast", 0.5), ("slow", 0.5)))
    tracker.start_stage("fast", total=10)
    clock.now += 1
    tracker.update("fast", 10)
    tracker.complete_stage("fast")
    tracker.start_stage("slow", total=10)
    clock.now += 10
    tracker.update("slow", 1)
    snap = tracker.snapshot()
    # slow: 10 s per unit observed, 9 units left -> 90 s. The naive formula says
    # elapsed / progress - elapsed = 11 / 0.55 - 11 = 9 s.
    assert snap["overall_eta"] == pytest.approx(90.0)


def test_priors_give_an_eta_before_any_unit_is_done() -> None:
    clock, emitted = FakeClock(), []
    priors = {"a": StagePrior(0.0, 0.1), "b": StagePrior(2.0, 0.5)}
    tracker = make(clock, emitted, stages=(("a", 0.5), ("b", 0.5)), priors=priors)
    tracker.set_total("a", 100)
    tracker.set_total("b", 100)
    tracker.start_stage("a")
    # fixed plus per unit: a is 0 + 100 x 0.1, b is 2 + 100 x 0.5
    assert tracker.snapshot()["overall_eta"] == pytest.approx(10 + 52)
    assert tracker.snapshot()["stage_eta"] == pytest.approx(10)


def test_pending_stage_without_prior_is_estimated_from_seconds_per_weight() -> None:
    clock, emitted = FakeClock(), []
    tracker = make(clock, emitted, stages=(("a", 0.25), ("b", 0.75)))
    tracker.start_stage("a", total=4)
    clock.now += 2
    tracker.update("a", 4)
    tracker.complete_stage("a")
    # 2 s for weight 0.25 -> 8 s per unit of weight -> b expected to take 6 s.
    assert tracker.snapshot()["overall_eta"] == pytest.approx(6.0)


def test_overall_progress_never_goes_back_and_equals_weighted_sum() -> None:
    clock, emitted = FakeClock(), []
    tracker = make(clock, emitted, min_interval_s=0)
    tracker.start_stage("universe_loading", total=10)
    tracker.update("universe_loading", 8)
    tracker.update("universe_loading", 3)  # a late, smaller count is ignored
    tracker.set_total("universe_loading", 100)  # a larger total must not pull it back
    tracker.update("universe_loading", 9)
    tracker.complete_stage("universe_loading")
    tracker.start_stage("data_fetching", total=4)
    for done in range(1, 5):
        clock.now += 1
        tracker.update("data_fetching", done)
    tracker.complete_stage("data_fetching")
    tracker.finish("completed")
    values = [snap["overall_progress"] for snap in emitted]
    assert values == sorted(values)
    for snap in emitted:
        weighted = sum(s["weight"] * s["progress"] for s in snap["stages"].values())
        assert snap["overall_progress"] == pytest.approx(weighted)
    seqs = [snap["seq"] for snap in emitted]
    assert seqs == list(range(1, len(emitted) + 1))


def test_emission_is_throttled_but_stage_changes_and_final_state_always_go_out() -> None:
    clock, emitted = FakeClock(), []
    tracker = make(clock, emitted, stages=(("only", 1.0),), min_interval_s=0.5)
    tracker.start_stage("only", total=1000)
    for done in range(1, 1001):
        clock.now += 0.001
        tracker.update("only", done)
    tracker.complete_stage("only")
    tracker.finish("completed")
    statuses = [snap["stages"]["only"]["status"] for snap in emitted]
    # start() + start_stage, at most 3 throttled updates in 1 s, completion, finish
    assert len(emitted) <= 7
    assert statuses[-2:] == ["completed", "completed"]
    assert emitted[-1]["status"] == "completed"
    assert emitted[-1]["overall_progress"] == pytest.approx(100.0)
    assert emitted[-1]["overall_eta"] == 0.0


def test_failure_marks_running_stage_failed_and_keeps_the_error() -> None:
    clock, emitted = FakeClock(), []
    tracker = make(clock, emitted)
    tracker.start_stage("universe_loading", total=1)
    tracker.finish("failed", error="boom")
    snap = emitted[-1]
    assert snap["status"] == "failed"
    assert snap["error"] == "boom"
    assert snap["stages"]["universe_loading"]["status"] == "failed"
    assert snap["completed_at"] == 1.7e9


def test_stage_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    tracker = make(clock, [])
    with caplog.at_level(logging.INFO, logger="technic.engine.progress"):
        tracker.start_stage("universe_loading", total=1)
        clock.now += 5.2
        tracker.complete_stage("universe_loading")
    assert "Starting stage: universe_loading" in caplog.messages
    assert "Completed stage: universe_loading (5.2s)" in caplog.messages


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stages": ()}, "at least one"),
        ({"stages": (("a", 0.5), ("a", 0.5))}, "unique"),
        ({"stages": (("a", 0.5), ("b", 0.6))}, "sum to 1"),
        ({"stages": (("a", -0.5), ("b", 1.5))}, ">= 0"),
        ({"min_interval_s": -1}, "min_interval_s"),
    ],
)
def test_bad_tracker_arguments_name_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultiStageProgressTracker(**kwargs)


def test_unknown_stage_and_updates_to_a_stage_not_running_are_refused() -> None:
    tracker = make(FakeClock(), [])
    with pytest.raises(ValueError, match="unknown stage"):
        tracker.start_stage("nope")
    with pytest.raises(ValueError, match="not running"):
        tracker.update("data_fetching", 1)
    with pytest.raises(ValueError, match="total"):
        tracker.set_total("data_fetching", -1)
    with pytest.raises(ValueError, match="terminal"):
        tracker.finish("running")  # type: ignore[arg-type]


# -- time_progress, checkpoints and linearity ----------------------------------------------


def run_at_rates(
    stage_seconds: dict[str, float],
    priors: dict[str, StagePrior],
    units: int = 100,
    tick_s: float = 0.1,
) -> tuple[MultiStageProgressTracker, list[dict]]:
    """Drive the seed's four stages through a scan where each stage takes the given seconds
    for ``units`` units, one report per tick, as run_scan would."""
    clock, emitted = FakeClock(), []
    tracker = make(clock, emitted, priors=priors, min_interval_s=0.0)
    tracker.start()
    for name, _ in SCAN_STAGES:
        tracker.set_total(name, units)
    for name, _ in SCAN_STAGES:
        tracker.start_stage(name)
        ticks = max(round(stage_seconds[name] / tick_s), 1)
        for tick in range(1, ticks + 1):
            clock.now += stage_seconds[name] / ticks
            tracker.update(name, units * tick / ticks)
        tracker.complete_stage(name)
    tracker.finish("completed")
    return tracker, emitted


def r_squared_by_sampling(times: np.ndarray, values: np.ndarray) -> float:
    """The same measure computed a second way: the bar interpolated on a fine grid."""
    grid = np.linspace(0.0, times[-1], 200_001)
    bar = np.interp(grid, times, values)
    ideal = 100.0 * grid / times[-1]
    return 1.0 - float(np.sum((bar - ideal) ** 2) / np.sum((bar - bar.mean()) ** 2))


# fetching takes 80 % of the time but is 20 % of the seed's bar
UNLIKE_WEIGHTS = {
    "universe_loading": 0.5,
    "data_fetching": 8.0,
    "symbol_scanning": 1.0,
    "finalization": 0.5,
}


def test_time_progress_with_right_priors_is_linear_while_the_weighted_bar_is_not() -> None:
    exact = {name: StagePrior(0.0, seconds / 100) for name, seconds in UNLIKE_WEIGHTS.items()}
    tracker, emitted = run_at_rates(UNLIKE_WEIGHTS, exact)
    times = np.array([snap["elapsed_seconds"] for snap in emitted])
    time_bar = np.array([snap["time_progress"] for snap in emitted])
    weighted_bar = np.array([snap["overall_progress"] for snap in emitted])
    assert np.all(np.diff(time_bar) >= 0), "time_progress went back"
    assert time_bar[-1] == 100.0 and weighted_bar[-1] == pytest.approx(100.0)
    assert max(time_bar[:-1]) < 100.0, "time_progress said 100 before the end"
    # every snapshot's time_progress is elapsed / (elapsed + ETA), short of 100 until the end
    for snap in emitted[1:-1]:
        done = 100 * snap["elapsed_seconds"] / (snap["elapsed_seconds"] + snap["overall_eta"])
        assert snap["time_progress"] == pytest.approx(min(done, TIME_PROGRESS_CAP))
    accuracy = tracker.accuracy()
    assert accuracy is not None
    assert accuracy.time_linearity == pytest.approx(1.0, abs=1e-6)
    assert accuracy.time_linearity == pytest.approx(
        r_squared_by_sampling(times, time_bar), abs=1e-6
    )
    assert accuracy.overall_linearity == pytest.approx(
        r_squared_by_sampling(times, weighted_bar), abs=1e-4
    )
    assert accuracy.overall_linearity < 0.8
    # right priors: every checkpoint's ETA is the time that remained
    assert [c.checkpoint for c in accuracy.checkpoints] == list(CHECKPOINTS)
    for checkpoint in accuracy.checkpoints:
        assert checkpoint.error_pct == pytest.approx(0.0, abs=1e-6)
        assert checkpoint.actual_remaining_s == pytest.approx(10.0 - checkpoint.elapsed_s)


def test_checkpoints_record_the_blended_eta_of_a_stage_slower_than_its_prior() -> None:
    """One stage of 100 units, prior 10 s, really 20 s. The prior weighs the share of units
    left, so at t seconds the estimate is (1 - t/20) x 10 + t/20 x 20 = 10 + t/2."""
    clock, emitted = FakeClock(), []
    tracker = make(
        clock,
        emitted,
        stages=(("only", 1.0),),
        priors={"only": StagePrior(0.0, 0.1)},
        min_interval_s=0.0,
    )
    tracker.start_stage("only", total=100)
    for tick in range(1, 201):
        clock.now += 0.1
        tracker.update("only", tick / 2)
        t = tick * 0.1
        assert tracker.snapshot()["overall_eta"] == pytest.approx(10 - t / 2)
    tracker.complete_stage("only")
    tracker.finish("completed")
    accuracy = tracker.accuracy()
    assert accuracy is not None
    for checkpoint in accuracy.checkpoints:
        # the first tick at which t / (10 + t/2) reached the checkpoint
        tick = next(
            k for k in range(1, 201) if 100 * (k / 10) / (10 + k / 20) >= checkpoint.checkpoint
        )
        t = tick / 10
        assert checkpoint.elapsed_s == pytest.approx(t)
        assert checkpoint.predicted_remaining_s == pytest.approx(10 - t / 2)
        assert checkpoint.actual_remaining_s == pytest.approx(20 - t)
        assert checkpoint.error_pct == pytest.approx(100 * ((10 - t / 2) - (20 - t)) / (20 - t))
    assert [c.checkpoint for c in accuracy.checkpoints] == list(CHECKPOINTS)
    assert accuracy.checkpoints[0].error_pct < -40  # the prior was half the real time


def test_a_stall_is_the_longest_time_the_bar_did_not_visibly_move() -> None:
    clock, emitted = FakeClock(), []
    tracker = make(clock, emitted, stages=(("only", 1.0),), min_interval_s=0.0)
    tracker.start_stage("only", total=100)
    for _ in range(10):
        clock.now += 0.1
        tracker.advance("only", 5)
    clock.now += 7.0  # a worker hangs: no unit for 7 s
    tracker.advance("only", 5)
    for _ in range(9):
        clock.now += 0.1
        tracker.advance("only", 5)
    tracker.complete_stage("only")
    tracker.finish("completed")
    accuracy = tracker.accuracy()
    assert accuracy is not None
    assert accuracy.overall_stall_s == pytest.approx(7.0)
    assert accuracy.time_stall_s >= 7.0


def test_time_progress_never_goes_back_when_the_eta_grows() -> None:
    clock, emitted = FakeClock(), []
    tracker = make(clock, emitted, stages=(("only", 1.0),), min_interval_s=0.0)
    tracker.start_stage("only", total=100)
    clock.now += 1
    tracker.update("only", 50)  # ETA 1 s: time_progress 50
    clock.now += 9
    tracker.update("only", 51)  # now 10 s for 51 units: ETA ~9.6 s, 51 %
    clock.now += 30
    tracker.update("only", 52)
    bars = [snap["time_progress"] for snap in emitted]
    assert bars == sorted(bars)


def test_accuracy_is_only_known_for_a_completed_scan() -> None:
    clock, emitted = FakeClock(), []
    tracker = make(clock, emitted, stages=(("only", 1.0),))
    tracker.start_stage("only", total=10)
    clock.now += 1
    tracker.update("only", 5)
    assert tracker.accuracy() is None
    tracker.finish("cancelled")
    assert tracker.accuracy() is None
    assert tracker.snapshot()["time_progress"] < 100


def test_expected_units_give_a_pending_stage_an_eta_before_its_total_is_known() -> None:
    clock, emitted = FakeClock(), []
    priors = {"a": StagePrior(0.0, 0.01), "b": StagePrior(1.0, 0.02)}
    tracker = make(clock, emitted, stages=(("a", 0.5), ("b", 0.5)), priors=priors)
    tracker.expect("b", 500)
    tracker.start_stage("a", total=100)
    assert tracker.snapshot()["overall_eta"] == pytest.approx(1 + 11)
    tracker.set_total("b", 1000)  # the real total replaces the expectation
    assert tracker.snapshot()["overall_eta"] == pytest.approx(1 + 21)


def test_stages_tile_the_scan_so_their_durations_add_up_to_its_time() -> None:
    """Work between two stages (opening the block before scanning) belongs to the stage it
    prepares: no second of the scan is outside every stage, where no prior could learn it."""
    clock, emitted = FakeClock(), []
    tracker = make(clock, emitted, stages=(("a", 0.5), ("b", 0.5)))
    tracker.start()
    clock.now += 0.5  # before the first stage
    tracker.start_stage("a", total=1)
    clock.now += 1
    tracker.update("a", 1)
    tracker.complete_stage("a")
    clock.now += 2  # between the stages
    tracker.start_stage("b", total=1)
    clock.now += 1
    tracker.update("b", 1)
    tracker.complete_stage("b")
    tracker.finish("completed")
    assert tracker.stage_durations() == {"a": 1.5, "b": 3.0}
    assert sum(tracker.stage_durations().values()) == tracker.snapshot()["elapsed_seconds"]


def test_a_stage_still_running_after_its_last_unit_is_given_its_learned_tail() -> None:
    """Fetching counts 100 symbols in 4 s, then writes the block for 2 s: the prior's tail
    keeps the ETA honest after the last symbol, and the snapshot reports the tail."""
    clock, emitted = FakeClock(), []
    prior = StagePrior(0.0, 0.04, tail_s=2.0)
    tracker = make(clock, emitted, stages=(("fetch", 1.0),), priors={"fetch": prior})
    tracker.start_stage("fetch", total=100)
    assert tracker.snapshot()["overall_eta"] == pytest.approx(6.0)
    for _ in range(4):
        clock.now += 1
        tracker.advance("fetch", 25)
    assert tracker.snapshot()["overall_eta"] == pytest.approx(2.0)
    clock.now += 0.5
    assert tracker.snapshot()["overall_eta"] == pytest.approx(1.5)
    clock.now += 1.5
    tracker.complete_stage("fetch")
    assert tracker.snapshot()["stages"]["fetch"]["tail"] == pytest.approx(2.0)


def test_tick_sends_a_fresh_snapshot_only_while_running_and_when_none_went_out() -> None:
    clock, emitted = FakeClock(), []
    tracker = make(clock, emitted, stages=(("only", 1.0),), min_interval_s=0.1)
    tracker.tick()
    assert emitted == []  # not started
    tracker.start_stage("only", total=10)
    count = len(emitted)
    clock.now += 0.05
    tracker.tick()
    assert len(emitted) == count  # one went out 0.05 s ago
    clock.now += 0.5
    tracker.tick()
    assert len(emitted) == count + 1
    assert emitted[-1]["elapsed_seconds"] == pytest.approx(0.55)
    tracker.finish("cancelled")
    clock.now += 1
    tracker.tick()
    assert emitted[-1]["status"] == "cancelled"
