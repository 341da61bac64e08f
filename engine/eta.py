"""What a scan's time will be, learned from past scans, and how right the estimate was.

Priors. A stage's duration is modelled as ``fixed_s + per_unit_s * units + tail_s``: the fixed
part is what a stage pays before its units whatever its size (starting workers, a first
request's round trip), the per-unit part what each symbol or request costs, and the tail
what it still does once every unit is counted (writing the fetched block to disk, building
it from a bar store). The tail is kept apart because it comes *after* the last unit: a
stage whose units are all done but which is still running has that much left, which no
extrapolation of its rate can see. All three come from the last scans of the same *kind*
(``scan_kind``: the provider, and for a network provider its rate limit, because a request
under 5 a minute and one under 100 a second are different units of time). The rule is
chosen to be explainable and robust, not clever:

- ``tail_s`` is the recency-weighted *median* of the measured tails;
- ``fixed_s`` is the intercept of a recency-weighted least-squares line through
  (units, seconds without the tail) when the past scans' sizes differ by at least a factor
  of two (otherwise a line through them says nothing about the intercept, and the measured
  default is kept);
- ``per_unit_s`` is the recency-weighted *median* of ``(seconds - tail_s - fixed_s) / units``,
  so one odd scan (the first one on a cold cache, a machine busy with something else) does
  not drag the estimate: from the third scan of a kind on, the usual case wins.

Each step back in history weighs ``RECENCY_DECAY`` times the one after it, so the priors
follow a machine that got faster or slower within a few scans.

Without history the measured defaults (``DEFAULT_PRIORS``) apply, so the first scan on a new
machine has a sane ETA. They were measured on this code with ``tests/bench/bench_eta.py
--defaults`` on the reference machine named in the README; a faster machine simply finishes
early on its first scan and learns its own figures from the second on.

Accuracy. ``ScanAccuracy`` is what a finished scan says about its own estimates: the overall
ETA predicted when the scan passed 10, 25, 50, 75 and 90 % of its expected time, beside the
time that actually remained, and how linear its progress bars were in time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Percent of a scan's expected time at which its ETA is recorded.
CHECKPOINTS: tuple[int, ...] = (10, 25, 50, 75, 90)
# Weight of each step back in a kind's history (the newest scan weighs 1).
RECENCY_DECAY = 0.8
# How many past stage runs of a kind the priors read.
HISTORY_SCANS = 20
# Sizes must differ by this factor before a line through them estimates a fixed cost.
FIT_SIZE_RATIO = 2.0


@dataclass(frozen=True)
class StagePrior:
    """A stage's expected seconds: ``fixed_s + per_unit_s * units + tail_s``."""

    fixed_s: float
    per_unit_s: float
    tail_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("fixed_s", "per_unit_s", "tail_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")

    def seconds(self, units: float) -> float:
        return self.fixed_s + self.per_unit_s * max(units, 0.0) + self.tail_s


# Cold-start priors, measured on this code (see the module docstring): the engine's work on
# the bundled sample (csv files cost the same per symbol), and on generated symbols.
MEASURED_SAMPLE_PRIORS: dict[str, StagePrior] = {
    "universe_loading": StagePrior(0.0029, 0.0),
    "data_fetching": StagePrior(0.0, 0.0001),
    "symbol_scanning": StagePrior(0.011, 8.1e-05),
    "finalization": StagePrior(0.0018, 7.9e-06),
}
MEASURED_SYNTHETIC_PRIORS: dict[str, StagePrior] = {
    "universe_loading": StagePrior(0.0, 1.4e-06),
    "data_fetching": StagePrior(0.0, 8.4e-05),
    "symbol_scanning": StagePrior(0.022, 1e-05),
    "finalization": StagePrior(0.0, 5.9e-06),
}
# Per provider. A network provider's data_fetching is paced by its rate limit
# (``set_pace``), which the tracker applies on top of its small fixed cost here.
DEFAULT_PRIORS: dict[str, dict[str, StagePrior]] = {
    "sample": MEASURED_SAMPLE_PRIORS,
    "csv": MEASURED_SAMPLE_PRIORS,
    "synthetic": MEASURED_SYNTHETIC_PRIORS,
    "polygon": {**MEASURED_SAMPLE_PRIORS, "data_fetching": StagePrior(0.05, 0.0)},
}


def scan_kind(provider: str, requests_per_minute: int | None = None) -> str:
    """The history a scan's priors are learned from: its provider, and the rate limit for a
    network provider (``polygon@300/min``), since a request's cost is set by the limit."""
    if provider == "polygon" and requests_per_minute:
        return f"polygon@{requests_per_minute}/min"
    return provider


def fit_stage_prior(
    history: Sequence[tuple[float, float, float | None]], default: StagePrior | None = None
) -> StagePrior | None:
    """A stage's prior from ``(units, seconds, tail seconds)`` of past runs, newest first
    (module docstring); a run that measured no tail counts as none.

    Runs with no units teach nothing about a per-unit cost and are ignored. Without usable
    history the ``default`` is returned.
    """
    points = [
        (float(units), float(seconds), float(tail or 0.0))
        for units, seconds, tail in history
        if units > 0 and seconds >= 0 and math.isfinite(units) and math.isfinite(seconds)
    ]
    if not points:
        return default
    weights = [RECENCY_DECAY**age for age in range(len(points))]
    tail_s = _weighted_median([min(tail, seconds) for _, seconds, tail in points], weights)
    body = [(units, max(seconds - tail_s, 0.0)) for units, seconds, _ in points]
    sizes = [units for units, _ in body]
    fixed_s = default.fixed_s if default is not None else 0.0
    if len(body) >= 3 and max(sizes) >= FIT_SIZE_RATIO * min(sizes):
        fixed_s = _intercept(body, weights)
    per_unit = [max(seconds - fixed_s, 0.0) / units for units, seconds in body]
    return StagePrior(fixed_s, _weighted_median(per_unit, weights), tail_s)


def fit_priors(
    history: Mapping[str, Sequence[tuple[float, float, float | None]]], provider: str
) -> dict[str, StagePrior]:
    """Priors for every stage: fitted from ``history`` where a stage has some, else measured
    defaults for the provider (a provider without defaults gets only what history gives)."""
    defaults = DEFAULT_PRIORS.get(provider, {})
    priors: dict[str, StagePrior] = {}
    for stage in {*defaults, *history}:
        prior = fit_stage_prior(history.get(stage, ()), defaults.get(stage))
        if prior is not None:
            priors[stage] = prior
    return priors


def _intercept(points: Sequence[tuple[float, float]], weights: Sequence[float]) -> float:
    """Intercept of the weighted least-squares line, clamped at 0 (no negative fixed cost)."""
    total = sum(weights)
    mean_x = sum(w * x for w, (x, _) in zip(weights, points, strict=True)) / total
    mean_y = sum(w * y for w, (_, y) in zip(weights, points, strict=True)) / total
    spread = sum(w * (x - mean_x) ** 2 for w, (x, _) in zip(weights, points, strict=True))
    if spread == 0:
        return 0.0
    slope = (
        sum(w * (x - mean_x) * (y - mean_y) for w, (x, y) in zip(weights, points, strict=True))
        / spread
    )
    return max(mean_y - max(slope, 0.0) * mean_x, 0.0)


def _weighted_median(values: Sequence[float], weights: Sequence[float]) -> float:
    """The smallest value at which the cumulative weight reaches half the total."""
    ordered = sorted(zip(values, weights, strict=True))
    half = sum(weights) / 2
    running = 0.0
    for value, weight in ordered:
        running += weight
        if running >= half:
            return value
    return ordered[-1][0]


@dataclass(frozen=True)
class EtaCheckpoint:
    """The overall ETA when a scan passed ``checkpoint`` % of its expected time, and the
    time that actually remained from that moment."""

    checkpoint: int
    elapsed_s: float
    predicted_remaining_s: float
    actual_remaining_s: float

    @property
    def error_pct(self) -> float | None:
        """Signed: positive when the ETA said more time than it took (pessimistic)."""
        if self.actual_remaining_s <= 0:
            return None
        return (
            100.0
            * (self.predicted_remaining_s - self.actual_remaining_s)
            / (self.actual_remaining_s)
        )


@dataclass(frozen=True)
class ScanAccuracy:
    """How good a completed scan's progress reports were.

    ``*_linearity`` is the R-squared of that bar against the ideal line from 0 at the start
    to 100 at the end, over time (1 is perfectly steady; it can be negative for a bar that
    is worse than a flat line at its mean). ``*_stall_s`` is the longest stretch during
    which that bar did not visibly move (by ``VISIBLE_MOVE`` points or more).
    """

    checkpoints: tuple[EtaCheckpoint, ...]
    time_linearity: float | None
    overall_linearity: float | None
    time_stall_s: float
    overall_stall_s: float


# A bar "moves" for a watcher when it grows by at least this many points (a pixel of a
# 1,000-pixel bar).
VISIBLE_MOVE = 0.1


class ProgressTrace:
    """A progress bar over time, as watchers saw it, reduced to a few running sums.

    Between two samples the bar is taken to move in a straight line (a page animates it so).
    The sums are the integrals over time of ``y``, ``y**2`` and ``t*y``, which is all the
    R-squared against the ideal line ``100 * t / T`` needs once the total time ``T`` is
    known; so a scan of any length is traced in constant memory.
    """

    def __init__(self) -> None:
        self._last: tuple[float, float] = (0.0, 0.0)
        self._integral_y = 0.0
        self._integral_yy = 0.0
        self._integral_ty = 0.0
        self._moved_at = 0.0
        self._moved_to = 0.0
        self.longest_stall_s = 0.0

    def add(self, t: float, y: float) -> None:
        """The bar showed ``y`` (0..100) at ``t`` seconds after the start; ``t`` never goes back."""
        t0, y0 = self._last
        if t < t0:
            raise ValueError(f"t: samples must not go back in time ({t} after {t0})")
        span = t - t0
        self._integral_y += span * (y0 + y) / 2
        self._integral_yy += span * (y0 * y0 + y0 * y + y * y) / 3
        self._integral_ty += span * (t0 * (2 * y0 + y) + t * (y0 + 2 * y)) / 6
        self._last = (t, y)
        self.longest_stall_s = max(self.longest_stall_s, t - self._moved_at)
        if y - self._moved_to >= VISIBLE_MOVE or (y >= 100 > self._moved_to):
            self._moved_at, self._moved_to = t, y

    def linearity(self, total_s: float) -> float | None:
        """R-squared of the bar against the ideal line from 0 at the start to 100 at
        ``total_s``; None for a scan too short to say (no time passed, or a flat bar)."""
        if total_s <= 0:
            return None
        mean = self._integral_y / total_s
        spread = self._integral_yy - mean * mean * total_s
        residual = (
            self._integral_yy - 200.0 / total_s * self._integral_ty + 10_000.0 * total_s / 3.0
        )
        if spread <= 0:
            return None
        return 1.0 - max(residual, 0.0) / spread
