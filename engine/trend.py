"""Stage-timing trends: percentiles read from duration histograms, and the regression verdict.

Durations are counted in fixed log-spaced bins, each ``BIN_RATIO`` (5 %) wider than the
previous, starting at ``BIN_FLOOR_S``. The database keeps such counts per hour (migration
0005, function ``stage_duration_bin``, which must agree with ``bin_bounds``), so a trend over
millions of runs adds up a few thousand counts instead of sorting the runs. A percentile read
from the bins is the geometric middle of the bin holding it: within 2.5 % of the true value.

The verdict rule (the README states it the same way):

- Only *full* intervals with at least ``MIN_COUNT`` runs are judged; thinner ones are
  skipped (they neither break nor extend a run).
- Walking the window oldest first, each judged interval's p50 is compared with the
  *baseline*: the median p50 of the last ``BASELINE_INTERVALS`` judged intervals that were
  steady. ``slower`` when p50 >= baseline x ``SLOWER_RATIO``, ``faster`` when
  <= baseline x ``FASTER_RATIO``, else ``steady``. A slower or faster interval does not enter
  the baseline, so a lasting regression stays flagged against the time before it began
  (for as long as that time is inside the window asked about).
- The verdict is the state of the latest full interval; ``since`` is the first interval of
  the unbroken run of intervals in that state ending there; the change is that interval's p50
  against its baseline, in percent. ``unknown`` when the latest full interval has fewer than
  ``MIN_COUNT`` runs or fewer than ``MIN_BASELINE`` steady intervals precede it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

BIN_FLOOR_S: Final = 0.001
BIN_RATIO: Final = 1.05
# 1 ms x 1.05^600 is about 5e9 s: no stage runs longer; longer durations share the last bin
MAX_BIN: Final = 600

BASELINE_INTERVALS: Final = 7
MIN_BASELINE: Final = 3
MIN_COUNT: Final = 5
SLOWER_RATIO: Final = 1.2
FASTER_RATIO: Final = 0.8

Trend = Literal["slower", "faster", "steady", "unknown"]
TrendInterval = Literal["1h", "1d", "1w"]
INTERVAL_STEPS: Final[dict[TrendInterval, timedelta]] = {
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
    "1w": timedelta(weeks=1),
}
# intervals are counted from a Monday midnight UTC, so weeks start on Mondays
INTERVAL_ORIGIN: Final = datetime(2001, 1, 1, tzinfo=UTC)


def interval_start(moment: datetime, interval: TrendInterval) -> datetime:
    """The start of the interval holding ``moment`` (the database's ``date_bin`` with the same
    step and ``INTERVAL_ORIGIN``)."""
    step = INTERVAL_STEPS[interval]
    return INTERVAL_ORIGIN + (moment - INTERVAL_ORIGIN) // step * step


def bin_bounds(index: int) -> tuple[float, float]:
    """The durations (seconds) bin ``index`` counts: ``[low, high)``; bin 0 also holds
    everything shorter than ``BIN_FLOOR_S``, the last bin everything longer."""
    if not 0 <= index <= MAX_BIN:
        raise ValueError(f"bin must be 0..{MAX_BIN}, got {index}")
    return BIN_FLOOR_S * BIN_RATIO**index, BIN_FLOOR_S * BIN_RATIO ** (index + 1)


def quantile(histogram: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of the durations counted in ``histogram`` (bin -> count):
    the geometric middle of the bin holding the ceil(q x n)-th shortest run (nearest rank),
    ``None`` when nothing was counted."""
    if not 0 <= q <= 1:
        raise ValueError(f"q must be within 0..1, got {q}")
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            low, high = bin_bounds(index)
            return math.sqrt(low * high)
    raise AssertionError("unreachable: the ranks add up to the total")


@dataclass(frozen=True, slots=True)
class IntervalP50:
    """What the verdict reads of one full interval."""

    start: datetime
    count: int
    p50_s: float | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a stage's latest full interval is slower or faster than its baseline."""

    trend: Trend
    change_pct: float | None
    since: datetime | None
    baseline_p50_s: float | None
    latest: datetime | None


def verdict(intervals: Sequence[IntervalP50]) -> Verdict:
    """Apply the rule of the module docstring to full intervals given oldest first."""
    steady_p50s: list[float] = []
    state: Trend = "unknown"
    run_start: datetime | None = None
    latest: IntervalP50 | None = None
    baseline: float | None = None
    for interval in intervals:
        latest = interval
        if interval.count < MIN_COUNT or interval.p50_s is None:
            continue
        if len(steady_p50s) < MIN_BASELINE:
            steady_p50s.append(interval.p50_s)
            state, run_start, baseline = "unknown", None, None
            continue
        baseline = statistics.median(steady_p50s[-BASELINE_INTERVALS:])
        now_state = _compare(interval.p50_s, baseline)
        if now_state == "steady":
            steady_p50s.append(interval.p50_s)
        if now_state != state:
            run_start = interval.start
        state = now_state
    if latest is None or latest.count < MIN_COUNT or latest.p50_s is None or baseline is None:
        return Verdict("unknown", None, None, None, None if latest is None else latest.start)
    change = (latest.p50_s / baseline - 1) * 100 if baseline > 0 else None
    return Verdict(state, change, run_start, baseline, latest.start)


def _compare(p50_s: float, baseline_s: float) -> Trend:
    if p50_s >= baseline_s * SLOWER_RATIO:
        return "slower"
    if p50_s <= baseline_s * FASTER_RATIO:
        return "faster"
    return "steady"
