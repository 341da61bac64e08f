"""Technical indicators for a whole universe at once, on time-major ``[T, S]`` blocks.

Layout
------
Every input and output is a float64 array ``[T, S]``: one row per bar (oldest first), one
column per symbol. Columns are *left-aligned*: a column's first bar is row 0 and its bars
run without interior NaN up to that column's own length; the rows after it may be NaN (a
shorter history). Every indicator here is causal (row ``t`` depends on rows ``<= t``
only) and every column starts on row 0, so all columns share the same warm-up rows: a seed
(the first SMA of an EMA, the first Wilder average...) is one vectorised step for all
symbols, and a column's result on its own valid rows equals TA-Lib run on that prefix
alone. What lies below a column's end (NaN, or anything else) can only change that
column's rows below its end, which nobody reads.

The rows inside the look-back period, where TA-Lib's output is NaN, are NaN here too, so
``out[lengths - 1, columns]`` is each symbol's value on its last bar, or NaN when its
history is too short for the indicator.

Parity with TA-Lib
------------------
Each function follows TA-Lib's own arithmetic (the 0.8 C core, default compatibility,
unstable period 0): the same seeds, the same update formulas, the same running sums for
moving windows and the same zero tests, so results agree with ``talib`` to a few units of
rounding (TA-Lib fuses some multiply-adds, numpy cannot), far inside 1e-9 relative.
Where TA-Lib's conventions are surprising the docstrings say so: RSI of a flat series is
0, ADX of a flat series is 0, MACD seeds its fast EMA late, and ADX's first values sum
``period - 1`` bars, not ``period``.

Why loops over rows
-------------------
No function loops over symbols. Recursions (EMA, Wilder smoothing) and moving windows are
a loop over the ``T`` rows in which each step is a few numpy calls across all ``S``
symbols, on state vectors that stay in the CPU cache. The block-wide alternatives are
slower here because they are memory-bound: on 504 x 10,000 bars one pass over a 40 MB
array costs about as much as a whole row loop (~10 ms), ``scipy.signal.lfilter`` along
axis 0 takes ~70 ms per recursion (it runs each symbol's recursion serially, latency-bound)
against ~8 ms for a row loop, and a cumulative-sum window would round differently from
TA-Lib's running sums. Streaming rows reads each input row once and writes each output
row once, which is the floor: allocating and filling one fresh 504 x 10,000 float64 output
alone costs ~12 ms there (page faults and memory bandwidth).
"""

from __future__ import annotations

import math
import operator

import numpy as np
import numpy.typing as npt

__all__ = [
    "adx",
    "atr",
    "bollinger",
    "dollar_volume",
    "ema",
    "macd",
    "relative_volume",
    "returns",
    "rolling_max",
    "rolling_mean",
    "rsi",
    "sma",
]

Array = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]

# TA-Lib's TA_IS_ZERO band (TA_EPSILON). In the 0.8 core it is only applied to the sum of
# ADX's two directional indicators; RSI's and ADX's true-range tests are exact.
_TA_EPSILON = 1e-14
_SMALLEST_NORMAL = float(np.finfo(np.float64).tiny)


# ---------------------------------------------------------------------------------------
# Helpers


def _block(values: npt.ArrayLike, name: str) -> Array:
    """``values`` as a float64 ``[T, S]`` array with contiguous rows (no copy if it has)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [T, S] array, got shape {array.shape}")
    if array.shape[1] > 1 and array.strides[1] != array.itemsize:
        array = np.ascontiguousarray(array)
    return array


def _blocks(**named: npt.ArrayLike) -> list[Array]:
    arrays = [_block(values, name) for name, values in named.items()]
    shapes = {array.shape for array in arrays}
    if len(shapes) != 1:
        raise ValueError(f"{', '.join(named)} must have the same shape, got {sorted(shapes)}")
    return arrays


def _period(value: int, name: str, minimum: int) -> int:
    """A period as TA-Lib accepts it: an integer, not below TA-Lib's own minimum."""
    period = operator.index(value)
    if period < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {period}")
    return period


def _output(shape: tuple[int, int], lookback: int) -> Array:
    """An uninitialised output whose look-back rows (TA-Lib's NaN rows) are already NaN."""
    out = np.empty(shape)
    out[: min(lookback, shape[0])] = np.nan
    return out


def _true_range(
    high: Array, low: Array, prev_close: Array, out: Array, spare: Array, flags: Mask
) -> Array:
    """TA-Lib's true range ``max(high - low, |prev_close - high|, |prev_close - low|)``.

    When ``high >= low`` that maximum is ``max(high, prev) - min(low, prev)``: three calls
    instead of seven and bit-identical (the result is one of TA-Lib's own differences).
    Columns with ``high < low`` (bad data, which cleaning removes but TA-Lib accepts) take
    the literal formula, so the result is TA-Lib's whatever the input.
    """
    np.maximum(high, prev_close, out=out)
    np.minimum(low, prev_close, out=spare)
    np.subtract(out, spare, out=out)
    np.less(high, low, out=flags)
    if flags.any():
        bad = np.flatnonzero(flags)
        hl = high[bad] - low[bad]
        up = np.abs(prev_close[bad] - high[bad])
        down = np.abs(prev_close[bad] - low[bad])
        out[bad] = np.maximum(np.maximum(hl, up), down)
    return out


class _DecayingFloor:
    """Whether any column of a Wilder state has fallen below a threshold, checked cheaply.

    A state updated as ``s = decay * s + value`` with ``value >= 0`` keeps every column at
    least ``decay`` times its previous value, so once the smallest column has been seen at
    ``m`` none can cross ``threshold`` for about ``log(threshold / m) / log(decay)`` rows.
    The NaN-ignoring minimum is taken again only then (one row early, which absorbs
    rounding) instead of on every row.
    """

    __slots__ = ("decay", "next_row", "threshold")

    def __init__(self, threshold: float, decay: float) -> None:
        self.threshold = threshold
        self.decay = decay
        self.next_row = 0

    def below(self, state: Array, row: int) -> bool:
        if row < self.next_row:
            return False
        low = float(np.fmin.reduce(state))
        if low < self.threshold:
            self.next_row = row + 1
            return True
        safe = 1
        if math.isfinite(low) and 0.0 < self.decay < 1.0:
            safe = max(1, int(math.log(self.threshold / low) / math.log(self.decay)) - 1)
        self.next_row = row + safe
        return False


class _Raised:
    """An ``np.errstate(call=...)`` handler that notes a floating-point error was raised.

    numpy checks the floating-point flags after every ufunc call anyway, so watching for
    a rare zero denominator this way costs nothing on the rows that have none.
    """

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, kind: str, flag: int) -> None:
        self.seen = True


# ---------------------------------------------------------------------------------------
# Moving averages and windows


def sma(x: npt.ArrayLike, period: int) -> Array:
    """Simple moving average, as ``talib.SMA``: the mean of the last ``period`` rows.

    TA-Lib keeps a running sum (add the newest value, emit ``sum / period``, subtract the
    oldest); so does this, in the same order, so both round alike (bit-identical in
    practice). A running sum drifts by a few ulps of the values seen, far below 1e-9.
    """
    values = _block(x, "x")
    period = _period(period, "period", 1)
    rows, columns = values.shape
    out = _output((rows, columns), period - 1)
    if rows < period or columns == 0:
        return out
    total = values[: period - 1].sum(axis=0)
    for t in range(period - 1, rows):
        total += values[t]
        np.divide(total, period, out=out[t])
        total -= values[t - period + 1]
    return out


rolling_mean = sma


def ema(x: npt.ArrayLike, period: int) -> Array:
    """Exponential moving average, as ``talib.EMA``: ``k = 2 / (period + 1)``.

    TA-Lib seeds the EMA with the simple average of the first ``period`` values (first
    output on row ``period - 1``), then applies ``((x - prev) * k) + prev``; so does this.
    """
    values = _block(x, "x")
    period = _period(period, "period", 1)
    rows, columns = values.shape
    out = _output((rows, columns), period - 1)
    if rows < period or columns == 0:
        return out
    k = 2.0 / (period + 1)
    np.divide(values[:period].sum(axis=0), period, out=out[period - 1])
    step = np.empty(columns)
    for t in range(period, rows):
        previous = out[t - 1]
        np.subtract(values[t], previous, out=step)
        step *= k
        np.add(step, previous, out=out[t])
    return out


def rolling_max(x: npt.ArrayLike, period: int) -> Array:
    """Highest value of the last ``period`` rows, as ``talib.MAX`` (``period >= 2``).

    Van Herk / Gil-Werman: the rows are cut into blocks of ``period``; a window ending
    inside block ``b`` is the running max of block ``b`` so far together with the suffix
    max of block ``b - 1`` from the window's first row. Three calls per row whatever the
    period, and a max is exact, so there is nothing to round differently from TA-Lib.
    """
    values = _block(x, "x")
    period = _period(period, "period", 2)
    rows, columns = values.shape
    out = _output((rows, columns), period - 1)
    if rows < period or columns == 0:
        return out
    suffix = np.empty((period, columns))  # suffix maxima of the previous block
    running = np.empty(columns)  # running maximum of the current block
    for start in range(0, rows, period):
        stop = min(start + period, rows)
        for t in range(start, stop):
            offset = t - start
            if offset == 0:
                np.copyto(running, values[t])
            else:
                np.maximum(running, values[t], out=running)
            if offset == period - 1:  # the window is exactly this block
                out[t] = running
            elif start > 0:  # the previous block's tail and this block's head
                np.maximum(suffix[offset + 1], running, out=out[t])
        if stop < rows:  # the next block needs this (complete) block's suffix maxima
            suffix[period - 1] = values[stop - 1]
            for offset in range(period - 2, 0, -1):
                np.maximum(suffix[offset + 1], values[start + offset], out=suffix[offset])
    return out


def bollinger(
    close: npt.ArrayLike, period: int = 20, stddev: float = 2.0
) -> tuple[Array, Array, Array]:
    """Bollinger bands ``(upper, middle, lower)``, as ``talib.BBANDS(close, period, stddev,
    stddev, matype=0)``: SMA middle band, ``middle +- stddev * sigma``.

    ``sigma`` is the *population* standard deviation of the window, computed the way
    TA-Lib 0.8 does it rather than from a plain sum of squares, which cancels badly: the
    window's deviations from a per-symbol shift (its first close) are summed and squared,
    ``var = mean(d**2) - mean(d)**2``, and whenever that shows cancellation (``var`` below
    1e-6 of ``mean(d**2)``, e.g. a stock drifting far from its shift while barely moving)
    or every ``32 * period`` rows, the shift is reset to the window mean and the sums are
    recomputed; a recomputed variance below 1e-12 of ``mean(d**2)`` is rounding and
    counts as 0. So a flat window has exactly zero width, as in TA-Lib. The middle band is
    TA-Lib's SMA (the same running sum as :func:`sma`).
    """
    values = _block(close, "close")
    period = _period(period, "period", 2)
    deviations = float(stddev)
    rows, columns = values.shape
    upper = _output((rows, columns), period - 1)
    middle = _output((rows, columns), period - 1)
    lower = _output((rows, columns), period - 1)
    if rows < period or columns == 0:
        return upper, middle, lower
    inverse = 1.0 / period
    reseed_every = 32 * period
    shift = values[0].copy()
    ring = np.empty((2, period, columns))  # [deviation, squared deviation] of window rows
    sums = np.zeros((2, columns))  # [sum of deviations, sum of squared deviations]
    total = values[: period - 1].sum(axis=0)  # the SMA's running sum
    for t in range(period - 1):
        np.subtract(values[t], shift, out=ring[0, t])
        np.multiply(ring[0, t], ring[0, t], out=ring[1, t])
        sums += ring[:, t]
    means = np.empty((2, columns))  # [mean deviation, mean squared deviation]
    variance = np.empty(columns)
    cancellation = np.empty(columns)
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in range(period - 1, rows):
            row = values[t]
            newest = ring[:, t % period]
            np.subtract(row, shift, out=newest[0])
            np.multiply(newest[0], newest[0], out=newest[1])
            sums += newest
            np.multiply(sums, inverse, out=means)
            np.multiply(means[0], means[0], out=variance)
            np.subtract(means[1], variance, out=variance)
            np.divide(variance, means[1], out=cancellation)
            periodic = (t - period + 1) % reseed_every == reseed_every - 1
            if periodic or np.fmin.reduce(cancellation) < 1e-6:
                reseed = np.arange(columns) if periodic else np.flatnonzero(cancellation < 1e-6)
                _reseed_variance(values, t, period, reseed, shift, ring, sums, variance)
            mid = middle[t]
            total += row
            np.divide(total, period, out=mid)
            total -= values[t - period + 1]
            np.sqrt(variance, out=variance)
            variance *= deviations
            np.add(mid, variance, out=upper[t])
            np.subtract(mid, variance, out=lower[t])
            sums -= ring[:, (t + 1) % period]
    return upper, middle, lower


def _reseed_variance(
    values: Array,
    t: int,
    period: int,
    columns: npt.NDArray[np.intp],
    shift: Array,
    ring: Array,
    sums: Array,
    variance: Array,
) -> None:
    """Re-centre the variance sums of ``columns`` on their current window's mean."""
    first = t - period + 1
    window = values[first : t + 1][:, columns]
    centre = window.sum(axis=0) * (1.0 / period)
    deviation = window - centre
    squared = deviation * deviation
    slots = np.arange(first, t + 1) % period
    ring[0][np.ix_(slots, columns)] = deviation
    ring[1][np.ix_(slots, columns)] = squared
    shift[columns] = centre
    sums[0, columns] = deviation.sum(axis=0)
    sums[1, columns] = squared.sum(axis=0)
    mean = sums[0, columns] * (1.0 / period)
    mean_square = sums[1, columns] * (1.0 / period)
    recomputed = mean_square - mean * mean
    recomputed[recomputed < 1e-12 * mean_square] = 0.0
    variance[columns] = recomputed


# ---------------------------------------------------------------------------------------
# Momentum


def rsi(close: npt.ArrayLike, period: int = 14) -> Array:
    """Relative strength index, as ``talib.RSI`` (Wilder smoothing, unstable period 0).

    The first average gain and loss (row ``period``) are plain means of the first
    ``period`` changes; after that ``avg = (avg * (period - 1) + change) / period``. RSI
    is ``100 * gain / (gain + loss)``, and 0 where ``gain + loss`` is exactly 0: TA-Lib
    0.8 gives a flat series RSI 0 (not 50), a series that only rises 100 and one that only
    falls 0. (TA-Lib used to zero anything below 1e-8, which killed the RSI of finely
    quoted instruments; upstream TA-Lib later moved the flat case to 50.)

    The state kept is ``period`` times the averages, ``s = s * (period - 1) / period +
    change``: one call fewer per row, and the factor cancels in ``gain / (gain + loss)``.
    """
    values = _block(close, "close")
    period = _period(period, "period", 2)
    rows, columns = values.shape
    out = _output((rows, columns), period)
    if rows <= period or columns == 0:
        return out
    decay = (period - 1) / period
    state = np.zeros((2, columns))  # period * [average gain, average loss]
    gain, loss = state
    change = np.empty(columns)
    moves = np.empty((2, columns))  # [gain, loss] of one row
    zeros = np.zeros(columns)
    denominator = np.empty(columns)
    undefined = _Raised()  # 0 / 0: no gain and no loss at all
    with np.errstate(divide="ignore", invalid="call", call=undefined):
        for t in range(1, rows):
            np.subtract(values[t], values[t - 1], out=change)
            np.maximum(change, zeros, out=moves[0])
            np.subtract(moves[0], change, out=moves[1])  # exactly max(-change, 0)
            if t > period:
                state *= decay
            state += moves
            if t < period:
                continue
            row = out[t]
            np.add(gain, loss, out=denominator)
            np.divide(gain, denominator, out=row)
            row *= 100.0
            if undefined.seen:
                row[denominator == 0.0] = 0.0
                undefined.seen = False
    return out


def macd(
    close: npt.ArrayLike, fast: int = 12, slow: int = 26, signal: int = 9
) -> tuple[Array, Array, Array]:
    """MACD ``(line, signal, histogram)``, as ``talib.MACD``.

    TA-Lib's quirk: both EMAs start on the slow EMA's first row (``slow - 1``), so the fast
    EMA is seeded with the mean of the ``fast`` closes *ending there*, not with the first
    ``fast`` closes as ``talib.EMA(close, fast)`` is; the line is therefore not
    ``ema(close, fast) - ema(close, slow)`` for a while. The signal is an EMA of the line
    seeded with the mean of its first ``signal`` values, and all three outputs start on row
    ``slow + signal - 2`` (33 for 12/26/9), although the line exists earlier. If ``slow <
    fast`` TA-Lib swaps them; so does this.
    """
    values = _block(close, "close")
    fast = _period(fast, "fast", 2)
    slow = _period(slow, "slow", 2)
    signal = _period(signal, "signal", 1)
    if slow < fast:
        fast, slow = slow, fast
    rows, columns = values.shape
    first = slow - 1  # first row of both EMAs and of the line
    lookback = first + signal - 1
    line = _output((rows, columns), lookback)
    trigger = _output((rows, columns), lookback)
    histogram = _output((rows, columns), lookback)
    if rows <= lookback or columns == 0:
        return line, trigger, histogram
    k = np.array([[2.0 / (fast + 1)], [2.0 / (slow + 1)]])
    k_signal = 2.0 / (signal + 1)
    emas = np.empty((2, columns))  # [fast EMA, slow EMA]
    np.divide(values[first - fast + 1 : first + 1].sum(axis=0), fast, out=emas[0])
    np.divide(values[:slow].sum(axis=0), slow, out=emas[1])
    early = np.empty((signal, columns))  # the line on rows first .. lookback: signal seed
    step2 = np.empty((2, columns))
    step = np.empty(columns)
    for t in range(first, rows):
        if t > first:
            np.subtract(values[t], emas, out=step2)
            step2 *= k
            np.add(step2, emas, out=emas)
        if t < lookback:
            np.subtract(emas[0], emas[1], out=early[t - first])
            continue
        current = line[t]
        np.subtract(emas[0], emas[1], out=current)
        if t == lookback:
            early[signal - 1] = current
            np.divide(early.sum(axis=0), signal, out=trigger[t])
        else:
            previous = trigger[t - 1]
            np.subtract(current, previous, out=step)
            step *= k_signal
            np.add(step, previous, out=trigger[t])
        np.subtract(current, trigger[t], out=histogram[t])
    return line, trigger, histogram


def returns(close: npt.ArrayLike, bars: int) -> Array:
    """Simple return over ``bars`` rows: ``close[t] / close[t - bars] - 1``.

    Equal to ``talib.ROCR(close, bars) - 1`` except after a zero close: ROCR outputs 0
    there, a -100 % "return" that would rank a stock on bad data; this gives NaN.
    """
    values = _block(close, "close")
    bars = _period(bars, "bars", 1)
    rows, columns = values.shape
    out = _output((rows, columns), bars)
    divided_by_zero = _Raised()  # x / 0 with x != 0; 0 / 0 is NaN already
    with np.errstate(divide="call", invalid="ignore", call=divided_by_zero):
        for t in range(bars, rows):
            row = out[t]
            np.divide(values[t], values[t - bars], out=row)
            if divided_by_zero.seen:
                row[values[t - bars] == 0.0] = np.nan
                divided_by_zero.seen = False
            row -= 1.0
    return out


# ---------------------------------------------------------------------------------------
# Volatility and trend strength


def atr(high: npt.ArrayLike, low: npt.ArrayLike, close: npt.ArrayLike, period: int = 14) -> Array:
    """Average true range, as ``talib.ATR``.

    True range needs the previous close, so it starts on row 1; the first ATR (row
    ``period``) is the mean of the first ``period`` true ranges, then Wilder's
    ``(atr * (period - 1) + tr) / period``. With ``period == 1`` that is the true range
    itself (``talib.TRANGE``), NaN on row 0.
    """
    high_, low_, close_ = _blocks(high=high, low=low, close=close)
    period = _period(period, "period", 1)
    rows, columns = close_.shape
    out = _output((rows, columns), period)
    if rows <= period or columns == 0:
        return out
    true_range = np.empty(columns)
    spare = np.empty(columns)
    flags = np.empty(columns, dtype=bool)
    total = np.zeros(columns)
    for t in range(1, period + 1):
        total += _true_range(high_[t], low_[t], close_[t - 1], true_range, spare, flags)
    np.divide(total, period, out=out[period])
    for t in range(period + 1, rows):
        _true_range(high_[t], low_[t], close_[t - 1], true_range, spare, flags)
        row = out[t]
        np.multiply(out[t - 1], period - 1, out=row)
        row += true_range
        row /= period
    return out


def adx(high: npt.ArrayLike, low: npt.ArrayLike, close: npt.ArrayLike, period: int = 14) -> Array:
    """Average directional index, as ``talib.ADX`` (first value on row ``2 * period - 1``).

    TA-Lib's seeding, reproduced:

    * +DM, -DM and TR are *summed* over rows ``1 .. period - 1`` (``period - 1`` bars, not
      ``period``), then smoothed Wilder's sum-way: ``s = s - s / period + value``;
    * from row ``period`` on, ``+DI = 100 * +DM_s / TR_s``, ``-DI`` alike, and
      ``DX = 100 * |-DI - +DI| / (-DI + +DI)``;
    * the first ADX is the mean of the DX of rows ``period .. 2 * period - 1``, then
      ``adx = (adx * (period - 1) + dx) / period``.

    A bar with ``TR_s == 0`` (no range at all so far) or ``+DI + -DI`` below 1e-14 has no
    DX: it adds 0 to the seed sum and leaves the ADX unchanged afterwards, so a flat series
    has ADX 0, not NaN. +DM is the up-move when it is positive and larger than the
    down-move, -DM the reverse; equal moves count for neither.

    ``TR_s`` cancels out of DX, so it is computed as ``100 * |-DM_s - +DM_s| / (-DM_s +
    +DM_s)``: fewer calls per row, the same value to rounding. The skip tests are still
    TA-Lib's, on the DIs it computes.
    """
    high_, low_, close_ = _blocks(high=high, low=low, close=close)
    period = _period(period, "period", 2)
    rows, columns = close_.shape
    lookback = 2 * period - 1
    out = _output((rows, columns), lookback)
    if rows <= lookback or columns == 0:
        return out
    decay = (period - 1) / period  # s - s / period == decay * s, to rounding
    moves = np.empty((3, columns))  # one row's [+DM, -DM, TR]
    smoothed = np.zeros((3, columns))  # [+DM_s, -DM_s, TR_s]
    plus_s, minus_s, tr_s = smoothed
    moved = np.empty((2, columns))  # [up-move, down-move], then their positive parts
    zeros = np.zeros((2, columns))
    wins = np.empty((2, columns), dtype=bool)
    spare = np.empty(columns)
    flags = np.empty(columns, dtype=bool)
    dm_sum = np.empty(columns)
    ratio = np.empty(columns)
    dx = np.empty(columns)
    sum_dx = np.zeros(columns)
    # TR_s only decays (by ``decay``) once positive, so it can only be 0 on leading rows.
    tr_floor = _DecayingFloor(_SMALLEST_NORMAL, decay)
    # +DI + -DI = 100 * (+DM_s + -DM_s) / TR_s < 1e-14 needs this ratio below ~1e-16.
    tiny_ratio = _TA_EPSILON / 100.0 * (1.0 + 1e-6)
    dx_scale = 100.0 / period
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in range(1, rows):
            np.subtract(high_[t], high_[t - 1], out=moved[0])
            np.subtract(low_[t - 1], low_[t], out=moved[1])
            # +DM if up > 0 and up > down; -DM if down > 0 and down > up: in both cases
            # "my positive part beats the other's positive part".
            np.maximum(moved, zeros, out=moved)
            np.greater(moved, moved[::-1], out=wins)
            np.multiply(moved, wins, out=moves[:2])
            _true_range(high_[t], low_[t], close_[t - 1], moves[2], spare, flags)
            if t >= period:
                smoothed *= decay
            smoothed += moves
            if t < period:
                continue
            np.add(plus_s, minus_s, out=dm_sum)
            np.subtract(minus_s, plus_s, out=dx)
            np.abs(dx, out=dx)
            np.divide(dx, dm_sum, out=dx)  # DX / 100
            np.divide(dm_sum, tr_s, out=ratio)
            skip = None
            if tr_floor.below(tr_s, t) or np.fmin.reduce(ratio) < tiny_ratio:
                skip = _adx_skipped(plus_s, minus_s, tr_s)
                dx[skip] = 0.0
            if t <= lookback:
                sum_dx += dx
                if t == lookback:
                    np.multiply(sum_dx, dx_scale, out=out[t])
                continue
            row = out[t]
            np.multiply(out[t - 1], decay, out=row)
            dx *= dx_scale
            row += dx
            if skip is not None:
                row[skip] = out[t - 1][skip]
    return out


def _adx_skipped(plus_s: Array, minus_s: Array, tr_s: Array) -> Mask:
    """The columns TA-Lib computes no DX for on this bar, by its own arithmetic."""
    plus_di = 100.0 * (plus_s / tr_s)
    minus_di = 100.0 * (minus_s / tr_s)
    return ~(tr_s > 0.0) | (minus_di + plus_di < _TA_EPSILON)


# ---------------------------------------------------------------------------------------
# Volume


def relative_volume(volume: npt.ArrayLike, period: int = 20) -> Array:
    """Today's volume over the ``period``-bar mean volume *including today*.

    The mean is TA-Lib's SMA (the same running sum as :func:`sma`); the ratio is NaN where
    that mean is 0 (a symbol that did not trade for ``period`` bars) or NaN.
    """
    values = _block(volume, "volume")
    period = _period(period, "period", 1)
    rows, columns = values.shape
    out = _output((rows, columns), period - 1)
    if rows < period or columns == 0:
        return out
    total = values[: period - 1].sum(axis=0)
    mean = np.empty(columns)
    divided_by_zero = _Raised()  # x / 0 with x != 0; 0 / 0 is NaN already
    with np.errstate(divide="call", invalid="ignore", call=divided_by_zero):
        for t in range(period - 1, rows):
            total += values[t]
            np.divide(total, period, out=mean)
            total -= values[t - period + 1]
            row = out[t]
            np.divide(values[t], mean, out=row)
            if divided_by_zero.seen:
                row[mean == 0.0] = np.nan
                divided_by_zero.seen = False
    return out


def dollar_volume(close: npt.ArrayLike, volume: npt.ArrayLike, period: int = 20) -> Array:
    """Mean traded value over ``period`` bars: ``SMA(close * volume, period)``.

    The same running sum as :func:`sma`, with the window's products kept in a ring buffer
    so each ``close * volume`` is computed once.
    """
    close_, volume_ = _blocks(close=close, volume=volume)
    period = _period(period, "period", 1)
    rows, columns = close_.shape
    out = _output((rows, columns), period - 1)
    if rows < period or columns == 0:
        return out
    traded = np.empty((period, columns))
    total = np.zeros(columns)
    for t in range(period - 1):
        np.multiply(close_[t], volume_[t], out=traded[t])
        total += traded[t]
    for t in range(period - 1, rows):
        newest = traded[t % period]
        np.multiply(close_[t], volume_[t], out=newest)
        total += newest
        np.divide(total, period, out=out[t])
        total -= traded[(t + 1) % period]
    return out
