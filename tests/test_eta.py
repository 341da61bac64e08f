"""Priors learned from a kind's history, and the progress trace's measures."""

from __future__ import annotations

import math

import pytest
from technic.engine.eta import (
    DEFAULT_PRIORS,
    RECENCY_DECAY,
    ProgressTrace,
    StagePrior,
    fit_priors,
    fit_stage_prior,
    scan_kind,
)


def test_one_cold_scan_among_warm_ones_does_not_move_the_per_unit_cost() -> None:
    """From the third scan of a kind on, the usual cost wins: the oldest run (a cold cache,
    10x slower) is outweighed by two warm ones."""
    warm, cold = 500 * 0.002, 500 * 0.02
    prior = fit_stage_prior(
        [(500, warm, None), (500, warm, None), (500, cold, None)], StagePrior(0.0, 1.0)
    )
    assert prior is not None
    assert prior.fixed_s == 0.0
    assert prior.per_unit_s == pytest.approx(0.002)


def test_the_newest_run_weighs_most() -> None:
    """Two runs disagree: the median by weight is the newer one's."""
    prior = fit_stage_prior([(100, 3.0, None), (100, 1.0, None)], None)
    assert prior is not None and prior.per_unit_s == pytest.approx(0.03)
    older_first = fit_stage_prior([(100, 1.0, None), (100, 3.0, None)], None)
    assert older_first is not None and older_first.per_unit_s == pytest.approx(0.01)


def test_sizes_that_differ_give_the_fixed_cost_as_the_line_intercept() -> None:
    """seconds = 0.5 + 0.001 x units, at three sizes: both parts are recovered."""
    history = [(units, 0.5 + 0.001 * units, 0.0) for units in (1000, 10_000, 100_000, 5000)]
    prior = fit_stage_prior(history, StagePrior(0.0, 0.0))
    assert prior is not None
    assert prior.fixed_s == pytest.approx(0.5)
    assert prior.per_unit_s == pytest.approx(0.001)
    assert prior.seconds(20_000) == pytest.approx(20.5)


def test_sizes_too_alike_keep_the_default_fixed_cost() -> None:
    history = [(1000, 2.5, None), (1100, 2.6, None), (1050, 2.55, None)]
    prior = fit_stage_prior(history, StagePrior(0.5, 9.9))
    assert prior is not None
    assert prior.fixed_s == 0.5
    assert prior.per_unit_s == pytest.approx((2.55 - 0.5) / 1050)


def test_the_tail_after_the_last_unit_is_learned_apart() -> None:
    """Writing a fetched block takes 2 s after the last symbol, whatever else varies: the
    tail is its own median, and the per-unit cost is what is left."""
    history = [(1000, 5.0, 2.0), (1000, 5.0, 2.1), (1000, 9.0, 1.0)]
    prior = fit_stage_prior(history, StagePrior(0.0, 0.0))
    assert prior is not None
    assert prior.tail_s == pytest.approx(2.0)
    assert prior.per_unit_s == pytest.approx(0.003)
    assert prior.seconds(1000) == pytest.approx(5.0)


def test_runs_without_units_teach_nothing_and_no_history_keeps_the_default() -> None:
    default = StagePrior(0.1, 0.01)
    assert fit_stage_prior([], default) is default
    assert fit_stage_prior([(0, 5.0, None), (10, math.nan, None)], default) is default
    assert fit_stage_prior([], None) is None


def test_fit_priors_covers_every_stage_of_the_provider() -> None:
    priors = fit_priors({"symbol_scanning": [(1000, 1.15, None)]}, "sample")
    assert set(priors) == set(DEFAULT_PRIORS["sample"])
    assert priors["universe_loading"] == DEFAULT_PRIORS["sample"]["universe_loading"]
    fixed = DEFAULT_PRIORS["sample"]["symbol_scanning"].fixed_s
    assert priors["symbol_scanning"].per_unit_s == pytest.approx((1.15 - fixed) / 1000)
    assert fit_priors({}, "no-such-provider") == {}


def test_recency_decay_is_a_weight_below_one() -> None:
    assert 0 < RECENCY_DECAY < 1


def test_kind_separates_rate_limits_of_a_network_provider() -> None:
    assert scan_kind("sample") == "sample"
    assert scan_kind("sample", 300) == "sample"
    assert scan_kind("polygon", 5) == "polygon@5/min"
    assert scan_kind("polygon", 300) != scan_kind("polygon", 5)


@pytest.mark.parametrize(
    ("fixed_s", "per_unit_s", "tail_s"),
    [(-1.0, 0.0, 0.0), (0.0, -0.1, 0.0), (math.inf, 0.0, 0.0), (0.0, math.nan, 0.0), (0, 0, -1)],
)
def test_a_prior_must_be_finite_and_not_negative(
    fixed_s: float, per_unit_s: float, tail_s: float
) -> None:
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        StagePrior(fixed_s, per_unit_s, tail_s)


def test_trace_of_a_perfect_bar_is_linear_and_of_a_late_jump_is_not() -> None:
    steady = ProgressTrace()
    for tick in range(1, 11):
        steady.add(tick, 10 * tick)
    assert steady.linearity(10) == pytest.approx(1.0)
    assert steady.longest_stall_s == pytest.approx(1.0)
    late = ProgressTrace()
    late.add(9, 0.0)
    late.add(10, 100.0)
    # flat for 9 s, then a ramp to 100 in the last second; its integrals by hand
    integral_y = 50.0
    integral_yy = 10_000 / 3
    integral_ty = (9 * (0 + 100) + 10 * (0 + 200)) / 6
    mean = integral_y / 10
    residual = integral_yy - 200 / 10 * integral_ty + 10_000 * 10 / 3
    assert late.linearity(10) == pytest.approx(1 - residual / (integral_yy - mean * mean * 10))
    assert late.linearity(10) < 0
    assert late.longest_stall_s == pytest.approx(10.0)  # nothing visible moved before 10 s


def test_trace_refuses_time_going_back_and_says_nothing_of_no_time() -> None:
    trace = ProgressTrace()
    trace.add(1.0, 5.0)
    with pytest.raises(ValueError, match="must not go back"):
        trace.add(0.5, 6.0)
    assert ProgressTrace().linearity(0.0) is None
    assert ProgressTrace().linearity(5.0) is None  # a flat bar has no spread
