"""Technical indicators for a whole universe at once, on time-major ``[T, S]`` blocks.

Layout
------
Every input and output is a float64 array ``[T, S]``: one row per bar (oldest first), one
column per symbol. Columns are *left-aligned*: a column's first bar is row 0 and its bars
run without interior NaN up to that column's own length; the rows after it may be NaN (a
shorter history). Every indicator here is causal (row ``t`` depends on rows ``<= t``
only) and every column starts on row 0, so all columns share the same warm-up rows: a seed
(the first SMA of an EMA, the first Wilder average...) falls on the same row for all
symbols, and a column's result on its own valid rows equals TA-Lib run on that prefix
alone. What lies below a column's end (NaN, or anything else) can only change that
column's rows below its end, which nobody reads.

The rows inside the look-back period, where TA-Lib's output is NaN, are NaN here too, so
``out[lengths - 1, columns]`` is each symbol's value on its last bar, or NaN when its
history is too short for the indicator.

Parity with TA-Lib
------------------
Each function follows the arithmetic of the TA-Lib C core that the ``talib`` wheel ships
(0.8, default compatibility, unstable period 0) operation for operation, as its machine
code does it where 0.8 departs from the classic C source: the same seeds, summed in the
same order; the same updates (an EMA's ``((x - prev) * k) + prev``, ADX's Wilder sums ``s
- s / period + value``, RSI's averages multiplied by ``1 / period`` rather than divided,
ATR's ``atr * k + tr * (1 - k)``); the same running sums for moving windows; the same zero
tests; and the same fused multiply-adds (see :func:`_fma`). On the tests' real and
synthetic bars every value is bit-identical to ``talib``'s; another TA-Lib build may differ
by a rounding, far inside the tests' 1e-9 relative. Where TA-Lib's conventions are
surprising the docstrings say so: RSI of a flat series is 0, ADX of a flat series is 0,
MACD seeds its fast EMA late, and ADX's first values sum ``period - 1`` bars, not
``period``.

Why compiled loops
------------------
The recursions (EMA, Wilder smoothing) and the moving windows are loops over the ``T``
rows. Written as numpy calls across all ``S`` symbols per row, a 504-row recursion costs
several microseconds of call overhead per row whatever the width, which dominates at the
scanner's chunk width (~625 symbols). So each indicator is a numba kernel
(:func:`numba.njit`): rows in the outer loop, symbols in the inner loop, per-symbol state
in vectors of length ``S``. On C-ordered ``[T, S]`` blocks the inner loop walks
contiguous memory, the ``S`` recursions are independent so they pipeline (and vectorise
where the loop has no branch) instead of waiting on one another's divides, and each input
row is read once and each output row written once. The block-wide numpy alternatives are
slower: ``scipy.signal.lfilter`` along axis 0 runs each symbol's recursion serially, and a
cumulative-sum window would round differently from TA-Lib's running sums.

The kernels are compiled with ``cache=True``. The first call of a kernel compiles it (0.2
to 5 s, about 13 s for all of them) and stores the machine code next to this file in
``__pycache__`` (or numba's user cache directory if that is read-only), keyed by this
file's timestamp and the CPU; numba writes cache files atomically, so worker processes
compiling or loading at once are safe. A later process loads a kernel in about 10 ms, after
a one-off ~0.6 s of numba start-up on its first call: :func:`warm_up` pays all that up
front. ``error_model="numpy"`` gives IEEE results (``x / 0`` is inf or NaN, as in TA-Lib's
C) instead of exceptions, and ``fastmath`` stays off so that nothing is reordered, or fused
unless TA-Lib fuses it too. ``nogil=True`` lets threads run kernels in parallel. Inputs are
converted to C-contiguous float64 first, so each kernel compiles for one array type (a
read-only input is another type: it compiles once more).
"""

from __future__ import annotations

import operator

import llvmlite.binding
import numba
import numpy as np
import numpy.typing as npt
from numba import types
from numba.extending import intrinsic

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

# TA-Lib's TA_IS_ZERO band (TA_EPSILON). In the 0.8 core it is only applied to the sum of
# ADX's two directional indicators; RSI's and ADX's true-range tests are exact.
_TA_EPSILON = 1e-14

_kernel = numba.njit(cache=True, nogil=True, error_model="numpy")

# The talib wheel's C core is built twice for EMA, MACD, ATR and BBANDS, plain and with
# fused multiply-adds, and picks the FMA build at load time on CPUs that have FMA (GCC
# target_clones). numba compiles for the host CPU, so the same test decides here.
_HOST_HAS_FMA = "+fma" in llvmlite.binding.get_host_cpu_features().flatten().split(",")


# ---------------------------------------------------------------------------------------
# Helpers


def _block(values: npt.ArrayLike, name: str) -> Array:
    """``values`` as a C-contiguous float64 ``[T, S]`` array (no copy if it is one)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [T, S] array, got shape {array.shape}")
    return np.ascontiguousarray(array)


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


def _outputs(shape: tuple[int, int], lookback: int) -> tuple[Array, Array, Array]:
    """Three outputs as :func:`_output`, cut from one allocation.

    Why: fresh memory costs a page fault per 4 KiB page on first write, several
    microseconds each on a virtual machine, and three [504, 625] outputs are 1,800 of them
    (about 7 ms, twenty times MACD's arithmetic). numpy asks for transparent huge pages for
    an allocation of 4 MiB or more, which one block of three usually is.
    """
    block = np.empty((3, *shape))
    block[:, : min(lookback, shape[0])] = np.nan
    return block[0], block[1], block[2]


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` as TA-Lib computes it on this CPU: one rounding (a fused multiply-add)
    where TA-Lib runs its FMA build, two roundings where it runs its plain one."""
    signature = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, sig, args):
        x, y, z = args
        if _HOST_HAS_FMA:
            return builder.fma(x, y, z)
        return builder.fadd(builder.fmul(x, y), z)

    return signature, codegen


@_kernel
def _true_range(high: float, low: float, prev_close: float) -> float:
    """TA-Lib's true range, literally: ``high - low``, replaced by ``|prev_close - high|``
    or ``|prev_close - low|`` when either is strictly greater.

    Being literal keeps TA-Lib's result on bad bars (``high < low``) and its handling of a
    NaN previous close (the comparisons fail, so the range is ``high - low``).
    """
    greatest = high - low
    up = abs(prev_close - high)
    greatest = up if up > greatest else greatest
    down = abs(prev_close - low)
    return down if down > greatest else greatest


@_kernel
def _accumulate(total: Array, row: Array) -> None:
    """``total += row``, one addition per column, in row order as TA-Lib's seed sums."""
    for s in range(total.shape[0]):
        total[s] += row[s]


@_kernel
def _max(a: float, b: float) -> float:
    """``np.maximum`` of two floats: the larger, NaN if either is NaN."""
    return a if (a >= b or a != a) else b


# ---------------------------------------------------------------------------------------
# Moving averages and windows


@_kernel
def _sma_rows(values: Array, period: int, out: Array) -> None:
    rows, columns = values.shape
    total = np.zeros(columns)
    for t in range(period - 1):
        _accumulate(total, values[t])
    for t in range(period - 1, rows):
        row, oldest, result = values[t], values[t - period + 1], out[t]
        for s in range(columns):
            running = total[s] + row[s]
            result[s] = running / period
            total[s] = running - oldest[s]


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
    _sma_rows(values, period, out)
    return out


rolling_mean = sma


@_kernel
def _ema_rows(values: Array, period: int, out: Array) -> None:
    rows, columns = values.shape
    k = 2.0 / (period + 1)
    seed = np.zeros(columns)
    for t in range(period):
        _accumulate(seed, values[t])
    first = out[period - 1]
    for s in range(columns):
        first[s] = seed[s] / period
    for t in range(period, rows):
        row, previous, result = values[t], out[t - 1], out[t]
        for s in range(columns):
            prev = previous[s]
            result[s] = _fma(row[s] - prev, k, prev)


def ema(x: npt.ArrayLike, period: int) -> Array:
    """Exponential moving average, as ``talib.EMA``: ``k = 2 / (period + 1)``.

    TA-Lib seeds the EMA with the simple average of the first ``period`` values (first
    output on row ``period - 1``), then applies ``((x - prev) * k) + prev``, one rounding
    for the multiply-add on FMA CPUs (see :func:`_fma`); so does this.
    """
    values = _block(x, "x")
    period = _period(period, "period", 1)
    rows, columns = values.shape
    out = _output((rows, columns), period - 1)
    if rows < period or columns == 0:
        return out
    _ema_rows(values, period, out)
    return out


@_kernel
def _rolling_max_rows(values: Array, period: int, out: Array) -> None:
    rows, columns = values.shape
    suffix = np.empty((period, columns))  # suffix maxima of the previous block
    running = np.empty(columns)  # running maximum of the current block
    for start in range(0, rows, period):
        stop = min(start + period, rows)
        running[:] = values[start]
        for t in range(start, stop):
            offset = t - start
            row, result = values[t], out[t]
            if offset > 0:
                for s in range(columns):
                    running[s] = _max(running[s], row[s])
            if offset == period - 1:  # the window is exactly this block
                result[:] = running
            elif start > 0:  # the previous block's tail and this block's head
                tail = suffix[offset + 1]
                for s in range(columns):
                    result[s] = _max(tail[s], running[s])
        if stop < rows:  # the next block needs this (complete) block's suffix maxima
            suffix[period - 1] = values[stop - 1]
            for offset in range(period - 2, 0, -1):
                later, row, current = suffix[offset + 1], values[start + offset], suffix[offset]
                for s in range(columns):
                    current[s] = _max(later[s], row[s])


def rolling_max(x: npt.ArrayLike, period: int) -> Array:
    """Highest value of the last ``period`` rows, as ``talib.MAX`` (``period >= 2``).

    Van Herk / Gil-Werman: the rows are cut into blocks of ``period``; a window ending
    inside block ``b`` is the running max of block ``b`` so far together with the suffix
    max of block ``b - 1`` from the window's first row. Three comparisons per value
    whatever the period, and a max is exact, so there is nothing to round differently from
    TA-Lib.
    """
    values = _block(x, "x")
    period = _period(period, "period", 2)
    rows, columns = values.shape
    out = _output((rows, columns), period - 1)
    if rows < period or columns == 0:
        return out
    _rolling_max_rows(values, period, out)
    return out


@_kernel
def _bollinger_rows(
    values: Array, period: int, deviations: float, upper: Array, middle: Array, lower: Array
) -> None:
    rows, columns = values.shape
    inverse = 1.0 / period
    reseed_every = 32 * period
    shift = values[0].copy()
    ring = np.empty((2, period, columns))  # [deviation, squared deviation] of window rows
    sums = np.zeros((2, columns))  # [sum of deviations, sum of squared deviations]
    total = np.zeros(columns)  # the SMA's running sum
    for t in range(period - 1):
        for s in range(columns):
            deviation = values[t, s] - shift[s]
            squared = deviation * deviation
            ring[0, t, s] = deviation
            ring[1, t, s] = squared
            sums[0, s] += deviation
            sums[1, s] += squared
            total[s] += values[t, s]
    for t in range(period - 1, rows):
        slot = t % period
        oldest = (t + 1) % period
        periodic = (t - period + 1) % reseed_every == reseed_every - 1
        for s in range(columns):
            row = values[t, s]
            deviation = row - shift[s]
            squared = deviation * deviation
            ring[0, slot, s] = deviation
            ring[1, slot, s] = squared
            sums[0, s] += deviation
            sums[1, s] += squared
            mean = sums[0, s] * inverse
            mean_square = sums[1, s] * inverse
            variance = mean_square - mean * mean
            if periodic or variance / mean_square < 1e-6:
                variance = _reseed_variance(values, t, period, s, shift, ring, sums)
            running = total[s] + row
            mid = running / period
            total[s] = running - values[t - period + 1, s]
            width = np.sqrt(variance) * deviations
            middle[t, s] = mid
            upper[t, s] = mid + width
            lower[t, s] = mid - width
            sums[0, s] -= ring[0, oldest, s]
            sums[1, s] -= ring[1, oldest, s]


@_kernel
def _reseed_variance(
    values: Array, t: int, period: int, s: int, shift: Array, ring: Array, sums: Array
) -> float:
    """Re-centre column ``s``'s variance sums on its current window's mean; its variance."""
    first = t - period + 1
    centre = 0.0
    for r in range(first, t + 1):
        centre += values[r, s]
    centre *= 1.0 / period
    sum_deviation = 0.0
    sum_squared = 0.0
    for r in range(first, t + 1):
        deviation = values[r, s] - centre
        squared = deviation * deviation
        ring[0, r % period, s] = deviation
        ring[1, r % period, s] = squared
        sum_deviation += deviation
        sum_squared += squared
    shift[s] = centre
    sums[0, s] = sum_deviation
    sums[1, s] = sum_squared
    mean = sum_deviation * (1.0 / period)
    mean_square = sum_squared * (1.0 / period)
    variance = mean_square - mean * mean
    if variance < 1e-12 * mean_square:
        variance = 0.0
    return variance


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
    upper, middle, lower = _outputs((rows, columns), period - 1)
    if rows < period or columns == 0:
        return upper, middle, lower
    _bollinger_rows(values, period, deviations, upper, middle, lower)
    return upper, middle, lower


# ---------------------------------------------------------------------------------------
# Momentum


@_kernel
def _rsi_value(gain: float, loss: float) -> float:
    total = loss + gain
    return (gain / total) * 100.0 if total > 0.0 else 0.0


@_kernel
def _rsi_rows(values: Array, period: int, out: Array) -> None:
    rows, columns = values.shape
    keep = float(period - 1)
    inverse = 1.0 / period
    gain = np.zeros(columns)
    loss = np.zeros(columns)
    for t in range(1, period + 1):
        row, previous = values[t], values[t - 1]
        for s in range(columns):
            change = row[s] - previous[s]
            rise = change if change > 0.0 else 0.0
            gain[s] += rise
            loss[s] += rise - change
    first = out[period]
    for s in range(columns):
        gain[s] *= inverse
        loss[s] *= inverse
        first[s] = _rsi_value(gain[s], loss[s])
    for t in range(period + 1, rows):
        row, previous, result = values[t], values[t - 1], out[t]
        for s in range(columns):
            change = row[s] - previous[s]
            rise = change if change > 0.0 else 0.0
            average_gain = (gain[s] * keep + rise) * inverse
            average_loss = ((rise - change) + loss[s] * keep) * inverse
            gain[s] = average_gain
            loss[s] = average_loss
            result[s] = _rsi_value(average_gain, average_loss)


def rsi(close: npt.ArrayLike, period: int = 14) -> Array:
    """Relative strength index, as ``talib.RSI`` (Wilder smoothing, unstable period 0).

    The first average gain and loss (row ``period``) are means of the first ``period``
    changes, then Wilder's ``avg = (avg * (period - 1) + move) / period``. TA-Lib 0.8
    writes both with a multiplication by ``1 / period`` rather than a division, and splits
    a change into ``rise = max(change, 0)`` and ``rise - change``; so does this, which
    makes the results bit-identical. RSI is ``(gain / (loss + gain)) * 100``, and 0 where
    ``loss + gain`` is not positive (NaN included): TA-Lib 0.8 gives a flat series RSI 0
    (not 50), a series that only rises 100 and one that only falls 0, and tests the sum
    exactly, not against an epsilon. (TA-Lib used to zero anything below 1e-8, which
    killed the RSI of finely quoted instruments; upstream TA-Lib later moved the flat case
    to 50.) Neither multiply-add is fused: TA-Lib has no FMA build of RSI.
    """
    values = _block(close, "close")
    period = _period(period, "period", 2)
    rows, columns = values.shape
    out = _output((rows, columns), period)
    if rows <= period or columns == 0:
        return out
    _rsi_rows(values, period, out)
    return out


@_kernel
def _macd_rows(
    values: Array, fast: int, slow: int, signal: int, line: Array, trigger: Array, hist: Array
) -> None:
    rows, columns = values.shape
    k_fast = 2.0 / (fast + 1)
    k_slow = 2.0 / (slow + 1)
    k_signal = 2.0 / (signal + 1)
    first = slow - 1  # first row of both EMAs and of the line
    lookback = first + signal - 1  # first row of the signal (and of every output)
    fast_ema = np.zeros(columns)
    slow_ema = np.zeros(columns)
    signal_ema = np.zeros(columns)  # the sum of the line's first values, then the signal
    for t in range(slow - fast, slow):
        _accumulate(fast_ema, values[t])
    for t in range(slow):
        _accumulate(slow_ema, values[t])
    for s in range(columns):
        fast_ema[s] /= fast
        slow_ema[s] /= slow
    for t in range(first, lookback):  # the line before the signal exists: its seed
        row = values[t]
        if t > first:
            for s in range(columns):
                fast_ema[s] = _fma(row[s] - fast_ema[s], k_fast, fast_ema[s])
                slow_ema[s] = _fma(row[s] - slow_ema[s], k_slow, slow_ema[s])
        for s in range(columns):
            signal_ema[s] += fast_ema[s] - slow_ema[s]
    for t in range(lookback, rows):
        row, line_row, trigger_row, hist_row = values[t], line[t], trigger[t], hist[t]
        update = t > first
        seed = t == lookback
        for s in range(columns):
            fast_s = fast_ema[s]
            slow_s = slow_ema[s]
            if update:
                fast_s = _fma(row[s] - fast_s, k_fast, fast_s)
                slow_s = _fma(row[s] - slow_s, k_slow, slow_s)
            current = fast_s - slow_s
            signal_s = signal_ema[s]
            if seed:
                signal_s = (signal_s + current) / signal
            else:
                signal_s = _fma(current - signal_s, k_signal, signal_s)
            fast_ema[s] = fast_s
            slow_ema[s] = slow_s
            signal_ema[s] = signal_s
            line_row[s] = current
            trigger_row[s] = signal_s
            hist_row[s] = current - signal_s


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
    fast`` TA-Lib swaps them; so does this. The three EMAs are updated as :func:`ema`.
    """
    values = _block(close, "close")
    fast = _period(fast, "fast", 2)
    slow = _period(slow, "slow", 2)
    signal = _period(signal, "signal", 1)
    if slow < fast:
        fast, slow = slow, fast
    rows, columns = values.shape
    lookback = slow + signal - 2
    line, trigger, histogram = _outputs((rows, columns), lookback)
    if rows <= lookback or columns == 0:
        return line, trigger, histogram
    _macd_rows(values, fast, slow, signal, line, trigger, histogram)
    return line, trigger, histogram


@_kernel
def _returns_rows(values: Array, bars: int, out: Array) -> None:
    rows, columns = values.shape
    for t in range(bars, rows):
        row, base, result = values[t], values[t - bars], out[t]
        for s in range(columns):
            result[s] = np.nan if base[s] == 0.0 else row[s] / base[s] - 1.0


def returns(close: npt.ArrayLike, bars: int) -> Array:
    """Simple return over ``bars`` rows: ``close[t] / close[t - bars] - 1``.

    Equal to ``talib.ROCR(close, bars) - 1`` except after a zero close: ROCR outputs 0
    there, a -100 % "return" that would rank a stock on bad data; this gives NaN.
    """
    values = _block(close, "close")
    bars = _period(bars, "bars", 1)
    rows, columns = values.shape
    out = _output((rows, columns), bars)
    if rows <= bars or columns == 0:
        return out
    _returns_rows(values, bars, out)
    return out


# ---------------------------------------------------------------------------------------
# Volatility and trend strength


@_kernel
def _atr_rows(high: Array, low: Array, close: Array, period: int, out: Array) -> None:
    rows, columns = close.shape
    if period == 1:  # TA-Lib's ATR(1) is TRANGE itself
        for t in range(1, rows):
            high_row, low_row, previous, result = high[t], low[t], close[t - 1], out[t]
            for s in range(columns):
                result[s] = _true_range(high_row[s], low_row[s], previous[s])
        return
    k = (period - 1) / period
    k_new = 1.0 - k
    total = np.zeros(columns)
    for t in range(1, period + 1):
        high_row, low_row, previous = high[t], low[t], close[t - 1]
        for s in range(columns):
            total[s] += _true_range(high_row[s], low_row[s], previous[s])
    first = out[period]
    for s in range(columns):
        first[s] = total[s] / period
    for t in range(period + 1, rows):
        high_row, low_row, previous = high[t], low[t], close[t - 1]
        prior, result = out[t - 1], out[t]
        for s in range(columns):
            true_range = _true_range(high_row[s], low_row[s], previous[s])
            result[s] = _fma(prior[s], k, true_range * k_new)


def atr(high: npt.ArrayLike, low: npt.ArrayLike, close: npt.ArrayLike, period: int = 14) -> Array:
    """Average true range, as ``talib.ATR``.

    True range needs the previous close, so it starts on row 1; the first ATR (row
    ``period``) is the mean of the first ``period`` true ranges, then Wilder's smoothing,
    which TA-Lib 0.8 writes ``atr = atr * k + tr * (1 - k)`` with ``k = (period - 1) /
    period`` (one multiply-add, fused on FMA CPUs, see :func:`_fma`); so does this. With
    ``period == 1`` TA-Lib returns the true range itself (``talib.TRANGE``), NaN on row 0;
    so does this.
    """
    high_, low_, close_ = _blocks(high=high, low=low, close=close)
    period = _period(period, "period", 1)
    rows, columns = close_.shape
    out = _output((rows, columns), period)
    if rows <= period or columns == 0:
        return out
    _atr_rows(high_, low_, close_, period, out)
    return out


@_kernel
def _directional_moves(high: float, prior_high: float, low: float, prior_low: float):
    """One bar's ``(+DM, -DM)`` as TA-Lib assigns them (at most one is non-zero)."""
    up = high - prior_high
    down = prior_low - low
    minus = down if (down > 0 and up < down) else 0.0
    plus = up if (up > 0 and up > down) else 0.0
    return plus, minus


@_kernel
def _directional_dx(plus_s: float, minus_s: float, tr_s: float):
    """``(has_dx, dx)``: TA-Lib's DX from the Wilder sums, and whether it computes one.

    TA-Lib 0.8 computes no DX unless ``TR_s > 0`` (exact; NaN fails too) and ``+DI + -DI``
    is outside TA_IS_ZERO's ``(-1e-14, 1e-14)``. The DX is computed either way (a division
    by 0 is harmless with IEEE arithmetic) so that the caller can select without a branch.
    """
    minus_di = 100.0 * (minus_s / tr_s)
    plus_di = 100.0 * (plus_s / tr_s)
    total = minus_di + plus_di
    has_dx = tr_s > 0.0 and not (-_TA_EPSILON < total < _TA_EPSILON)
    return has_dx, 100.0 * (abs(minus_di - plus_di) / total)


@_kernel
def _adx_rows(high: Array, low: Array, close: Array, period: int, out: Array) -> None:
    rows, columns = close.shape
    keep = float(period - 1)
    lookback = 2 * period - 1
    plus = np.zeros(columns)  # +DM_s
    minus = np.zeros(columns)  # -DM_s
    true_range = np.zeros(columns)  # TR_s
    average = np.zeros(columns)  # the DX seed sum, then the ADX
    for t in range(1, period):  # plain sums over the first period - 1 bars
        high_row, prior_high, low_row, prior_low = high[t], high[t - 1], low[t], low[t - 1]
        previous = close[t - 1]
        for s in range(columns):
            plus_dm, minus_dm = _directional_moves(
                high_row[s], prior_high[s], low_row[s], prior_low[s]
            )
            minus[s] += minus_dm
            plus[s] += plus_dm
            true_range[s] += _true_range(high_row[s], low_row[s], previous[s])
    for t in range(period, rows):
        high_row, prior_high, low_row, prior_low = high[t], high[t - 1], low[t], low[t - 1]
        previous, result = close[t - 1], out[t]
        seeding = t < lookback
        seeded = t == lookback
        for s in range(columns):
            plus_dm, minus_dm = _directional_moves(
                high_row[s], prior_high[s], low_row[s], prior_low[s]
            )
            minus_s = minus[s]
            minus_s -= minus_s / period
            minus_s += minus_dm
            plus_s = plus[s]
            plus_s -= plus_s / period
            plus_s += plus_dm
            tr_s = true_range[s]
            tr_s = tr_s - tr_s / period + _true_range(high_row[s], low_row[s], previous[s])
            minus[s] = minus_s
            plus[s] = plus_s
            true_range[s] = tr_s
            has_dx, dx = _directional_dx(plus_s, minus_s, tr_s)
            adx_s = average[s]
            if seeding or seeded:
                adx_s += dx if has_dx else 0.0
                if seeded:
                    adx_s = adx_s / period
            else:
                smoothed = (adx_s * keep + dx) / period
                adx_s = smoothed if has_dx else adx_s
            average[s] = adx_s
            if not seeding:
                result[s] = adx_s


def adx(high: npt.ArrayLike, low: npt.ArrayLike, close: npt.ArrayLike, period: int = 14) -> Array:
    """Average directional index, as ``talib.ADX`` (first value on row ``2 * period - 1``).

    TA-Lib's seeding, reproduced:

    * +DM, -DM and TR are *summed* over rows ``1 .. period - 1`` (``period - 1`` bars, not
      ``period``), then smoothed Wilder's sum-way: ``s = s - s / period + value``;
    * from row ``period`` on, ``+DI = 100 * (+DM_s / TR_s)``, ``-DI`` alike, and
      ``DX = 100 * (|-DI - +DI| / (-DI + +DI))``;
    * the first ADX is the mean of the DX of rows ``period .. 2 * period - 1``, then
      ``adx = (adx * (period - 1) + dx) / period``.

    A bar with ``TR_s == 0`` (no range at all so far) or ``+DI + -DI`` below 1e-14 has no
    DX: it adds 0 to the seed sum and leaves the ADX unchanged afterwards, so a flat series
    has ADX 0, not NaN. +DM is the up-move when it is positive and larger than the
    down-move, -DM the reverse; equal moves count for neither. Every step is TA-Lib's own,
    in its order, and none is fused (TA-Lib has no FMA build of ADX); the kernel selects
    instead of branching so that its seven divisions per value run four at a time.
    """
    high_, low_, close_ = _blocks(high=high, low=low, close=close)
    period = _period(period, "period", 2)
    rows, columns = close_.shape
    lookback = 2 * period - 1
    out = _output((rows, columns), lookback)
    if rows <= lookback or columns == 0:
        return out
    _adx_rows(high_, low_, close_, period, out)
    return out


# ---------------------------------------------------------------------------------------
# Volume


@_kernel
def _relative_volume_rows(values: Array, period: int, out: Array) -> None:
    rows, columns = values.shape
    total = np.zeros(columns)
    for t in range(period - 1):
        _accumulate(total, values[t])
    for t in range(period - 1, rows):
        row, oldest, result = values[t], values[t - period + 1], out[t]
        for s in range(columns):
            running = total[s] + row[s]
            mean = running / period
            total[s] = running - oldest[s]
            result[s] = np.nan if mean == 0.0 else row[s] / mean


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
    _relative_volume_rows(values, period, out)
    return out


@_kernel
def _dollar_volume_rows(close: Array, volume: Array, period: int, out: Array) -> None:
    rows, columns = close.shape
    total = np.zeros(columns)
    for t in range(period - 1):
        close_row, volume_row = close[t], volume[t]
        for s in range(columns):
            total[s] += close_row[s] * volume_row[s]
    for t in range(period - 1, rows):
        close_row, volume_row, result = close[t], volume[t], out[t]
        oldest_close, oldest_volume = close[t - period + 1], volume[t - period + 1]
        for s in range(columns):
            running = total[s] + close_row[s] * volume_row[s]
            result[s] = running / period
            total[s] = running - oldest_close[s] * oldest_volume[s]


def dollar_volume(close: npt.ArrayLike, volume: npt.ArrayLike, period: int = 20) -> Array:
    """Mean traded value over ``period`` bars: ``SMA(close * volume, period)``.

    The same running sum as :func:`sma` over the products ``close * volume``; the product
    leaving the window is computed again rather than stored (a product rounds the same
    every time).
    """
    close_, volume_ = _blocks(close=close, volume=volume)
    period = _period(period, "period", 1)
    rows, columns = close_.shape
    out = _output((rows, columns), period - 1)
    if rows < period or columns == 0:
        return out
    _dollar_volume_rows(close_, volume_, period, out)
    return out


# ---------------------------------------------------------------------------------------
# Start-up


def warm_up() -> None:
    """Load every kernel now, compiling it first if numba's disk cache has none for this CPU.

    Without this, a process pays on its first indicator call: about 0.6 s of numba start-up
    (its numpy support modules), then about 10 ms per kernel read from the cache, or about
    13 s in all when the cache is empty (a fresh checkout, a new CPU, an edit of this
    file). A worker-pool initializer can pay that before the first chunk arrives; called in
    a ``forkserver`` preload it is paid once, and the forked workers inherit the loaded
    code. Not in ``__all__``: it is start-up plumbing, not an indicator.
    """
    x = np.ones((8, 1))
    sma(x, 2)
    ema(x, 2)
    rolling_max(x, 2)
    bollinger(x, 2)
    rsi(x, 2)
    macd(x, 2, 3, 1)
    returns(x, 1)
    atr(x, x, x, 2)
    adx(x, x, x, 2)
    relative_volume(x, 2)
    dollar_volume(x, x, 2)
