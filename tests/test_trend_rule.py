"""The pure trend rule (engine/trend.py): histogram percentiles and the regression verdict."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from technic.engine.trend import (
    BIN_FLOOR_S,
    BIN_RATIO,
    MAX_BIN,
    IntervalP50,
    bin_bounds,
    quantile,
    verdict,
)

DAY0 = datetime(2026, 10, 1, tzinfo=UTC)


def days(p50s: list[float], counts: list[int] | None = None) -> list[IntervalP50]:
    counts = counts or [20] * len(p50s)
    pairs = enumerate(zip(p50s, counts, strict=True))
    return [IntervalP50(DAY0 + timedelta(days=i), n, p) for i, (p, n) in pairs]


def python_bin(seconds: float) -> int:
    """The bin rule of migration 0005's stage_duration_bin, for building test histograms."""
    if seconds < BIN_FLOOR_S:
        return 0
    return min(MAX_BIN, int(np.floor(np.log(seconds / BIN_FLOOR_S) / np.log(BIN_RATIO))))


def test_histogram_percentiles_are_within_the_bin_error() -> None:
    rng = np.random.default_rng(7)
    durations = rng.lognormal(1.0, 0.6, 5000)
    histogram: dict[int, int] = {}
    for d in durations:
        histogram[python_bin(d)] = histogram.get(python_bin(d), 0) + 1
    for q in (0.5, 0.9):
        exact = float(np.percentile(durations, q * 100, method="inverted_cdf"))
        assert quantile(histogram, q) == pytest.approx(exact, rel=0.026)


def test_bins_are_five_percent_wide_and_bounded() -> None:
    low, high = bin_bounds(100)
    assert high / low == pytest.approx(1.05)
    assert quantile({}, 0.5) is None
    with pytest.raises(ValueError, match="bin must be"):
        bin_bounds(MAX_BIN + 1)
    with pytest.raises(ValueError, match="q must be"):
        quantile({1: 1}, 1.5)


def test_a_planted_regression_is_slower_since_its_first_day() -> None:
    rng = np.random.default_rng(1)
    p50s = list(10 * rng.uniform(0.95, 1.05, 20)) + list(14 * rng.uniform(0.97, 1.03, 12))
    result = verdict(days(p50s))
    assert result.trend == "slower"
    assert result.since == DAY0 + timedelta(days=20)
    assert result.change_pct == pytest.approx(40, abs=6)
    assert result.latest == DAY0 + timedelta(days=31)


def test_noise_within_twenty_percent_is_steady() -> None:
    p50s = [10, 11.5, 9, 10.8, 8.7, 11.2, 9.4, 10.1, 11.4, 8.9, 10.6]
    result = verdict(days(p50s))
    assert result.trend == "steady"
    assert result.since == DAY0 + timedelta(days=3)  # the first judged after 3 warm-up days


def test_a_fix_is_faster_and_a_single_spike_is_not_a_regression() -> None:
    assert verdict(days([10] * 10 + [7, 7])).trend == "faster"
    spike = verdict(days([10] * 10 + [20] + [10] * 3))
    assert (spike.trend, spike.since) == ("steady", DAY0 + timedelta(days=11))


def test_thin_intervals_are_skipped_and_too_little_data_is_unknown() -> None:
    p50s = [10] * 8 + [30] + [14, 14]
    counts = [20] * 8 + [2] + [20, 20]
    result = verdict(days(p50s, counts))
    assert (result.trend, result.since) == ("slower", DAY0 + timedelta(days=9))
    assert verdict(days([10, 10, 14])).trend == "unknown"  # two baseline intervals only
    assert verdict(days([10] * 8 + [14], [20] * 8 + [4])).trend == "unknown"  # latest thin
    assert verdict([]).trend == "unknown"
