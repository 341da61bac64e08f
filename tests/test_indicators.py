"""engine.indicators against TA-Lib, symbol by symbol, on real and synthetic bars.

Every vectorised result is compared with TA-Lib run on each column's valid prefix alone (a
1-D float64 array), at 1e-9 relative tolerance with NaN in the same places; rows after a
column's own length are not compared (the indicators promise nothing there).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import pytest
import talib
from technic.engine import indicators as ind
from technic.engine.sample import load_sample_block

FIELDS = ("open", "high", "low", "close", "volume")
RTOL = 1e-9


@dataclass(frozen=True)
class Bars:
    """Left-aligned ``[T, S]`` bars and each column's number of valid rows."""

    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    lengths: np.ndarray

    def column(self, s: int) -> dict[str, np.ndarray]:
        """One symbol's valid prefix, as the contiguous 1-D arrays TA-Lib is given."""
        n = self.lengths[s]
        return {f: np.ascontiguousarray(getattr(self, f)[:n, s]) for f in FIELDS}


@dataclass(frozen=True)
class Spec:
    """An indicator call on a block, the same call on one symbol with TA-Lib, tolerances."""

    name: str
    ours: Callable[[Bars], object]
    theirs: Callable[[dict[str, np.ndarray]], object]
    atol: float = 0.0


def _sma_of_dollars(c: dict[str, np.ndarray]) -> np.ndarray:
    return talib.SMA(c["close"] * c["volume"], 20)


# MACD and its histogram cross zero, where a relative tolerance means nothing: their
# absolute differences (rounding in a difference of two EMAs of prices up to ~$2,000) are
# a few 1e-13; 1e-11 is still a hundred million times below a cent.
SPECS = [
    Spec("sma_20", lambda b: ind.sma(b.close, 20), lambda c: talib.SMA(c["close"], 20)),
    Spec("sma_50", lambda b: ind.sma(b.close, 50), lambda c: talib.SMA(c["close"], 50)),
    Spec("sma_200", lambda b: ind.sma(b.close, 200), lambda c: talib.SMA(c["close"], 200)),
    Spec(
        "rolling_mean_10",
        lambda b: ind.rolling_mean(b.close, 10),
        lambda c: talib.SMA(c["close"], 10),
    ),
    Spec("ema_12", lambda b: ind.ema(b.close, 12), lambda c: talib.EMA(c["close"], 12)),
    Spec("ema_26", lambda b: ind.ema(b.close, 26), lambda c: talib.EMA(c["close"], 26)),
    Spec("rsi_14", lambda b: ind.rsi(b.close), lambda c: talib.RSI(c["close"], 14)),
    Spec("rsi_2", lambda b: ind.rsi(b.close, 2), lambda c: talib.RSI(c["close"], 2)),
    Spec(
        "macd_12_26_9",
        lambda b: ind.macd(b.close),
        lambda c: talib.MACD(c["close"], 12, 26, 9),
        atol=1e-11,
    ),
    Spec(
        "macd_5_35_5",
        lambda b: ind.macd(b.close, 5, 35, 5),
        lambda c: talib.MACD(c["close"], 5, 35, 5),
        atol=1e-11,
    ),
    Spec(
        "atr_14",
        lambda b: ind.atr(b.high, b.low, b.close),
        lambda c: talib.ATR(c["high"], c["low"], c["close"], 14),
    ),
    Spec(
        "atr_1",
        lambda b: ind.atr(b.high, b.low, b.close, 1),
        lambda c: talib.ATR(c["high"], c["low"], c["close"], 1),
    ),
    Spec(
        "adx_14",
        lambda b: ind.adx(b.high, b.low, b.close),
        lambda c: talib.ADX(c["high"], c["low"], c["close"], 14),
    ),
    Spec(
        "adx_5",
        lambda b: ind.adx(b.high, b.low, b.close, 5),
        lambda c: talib.ADX(c["high"], c["low"], c["close"], 5),
    ),
    Spec(
        "bollinger_20_2",
        lambda b: ind.bollinger(b.close),
        lambda c: talib.BBANDS(c["close"], 20, 2.0, 2.0, 0),
    ),
    Spec(
        "bollinger_10_1",
        lambda b: ind.bollinger(b.close, 10, 1.0),
        lambda c: talib.BBANDS(c["close"], 10, 1.0, 1.0, 0),
    ),
    Spec(
        "rolling_max_252",
        lambda b: ind.rolling_max(b.high, 252),
        lambda c: talib.MAX(c["high"], 252),
    ),
    Spec(
        "rolling_max_7", lambda b: ind.rolling_max(b.close, 7), lambda c: talib.MAX(c["close"], 7)
    ),
    Spec("returns_1", lambda b: ind.returns(b.close, 1), lambda c: talib.ROCR(c["close"], 1) - 1),
    Spec(
        "returns_21", lambda b: ind.returns(b.close, 21), lambda c: talib.ROCR(c["close"], 21) - 1
    ),
    Spec(
        "relative_volume_20",
        lambda b: ind.relative_volume(b.volume, 20),
        lambda c: c["volume"] / talib.SMA(c["volume"], 20),
    ),
    Spec(
        "dollar_volume_20",
        lambda b: ind.dollar_volume(b.close, b.volume, 20),
        _sma_of_dollars,
    ),
]
BY_NAME = {spec.name: spec for spec in SPECS}


def as_tuple(result: object) -> tuple[np.ndarray, ...]:
    return result if isinstance(result, tuple) else (result,)


def assert_matches_talib(spec: Spec, bars: Bars) -> None:
    """Every output of ``spec`` on ``bars`` equals TA-Lib's on each column's prefix."""
    ours = as_tuple(spec.ours(bars))
    checked = 0
    for s in range(bars.close.shape[1]):
        n = bars.lengths[s]
        theirs = as_tuple(spec.theirs(bars.column(s)))
        assert len(ours) == len(theirs)
        for k, (mine, ref) in enumerate(zip(ours, theirs, strict=True)):
            assert mine.shape == bars.close.shape and mine.dtype == np.float64
            np.testing.assert_allclose(
                mine[:n, s],
                ref,
                rtol=RTOL,
                atol=spec.atol,
                equal_nan=True,
                err_msg=f"{spec.name} output {k}, column {s} (length {n})",
            )
            checked += int(np.count_nonzero(~np.isnan(ref)))
    assert checked > 0, "nothing was compared: every reference value was NaN"


def left_align(arrays: dict[str, np.ndarray], columns: np.ndarray) -> Bars:
    """Take ``columns`` and shift each one's valid rows to row 0, NaN below."""
    firsts = np.max([np.argmax(~np.isnan(arrays[f][:, columns]), axis=0) for f in FIELDS], 0)
    rows = arrays["close"].shape[0]
    aligned = {f: np.full((rows, len(columns)), np.nan) for f in FIELDS}
    for j, (column, first) in enumerate(zip(columns, firsts, strict=True)):
        for f in FIELDS:
            aligned[f][: rows - first, j] = arrays[f][first:, column]
    return Bars(**aligned, lengths=rows - firsts)


@functools.cache
def sample_bars() -> tuple[Bars, int]:
    """Real symbols with no missing field: complete ones as they are, late listings shifted.

    Returns the bars and how many of the columns are complete (the first ones).
    """
    block = load_sample_block()
    arrays = {f: np.asarray(getattr(block, f)) for f in FIELDS}
    missing = np.isnan(np.stack([arrays[f] for f in FIELDS]))  # [field, T, S]
    complete = np.flatnonzero(~missing.any(axis=(0, 1)))
    # listed late: missing rows only before the first row where every field is present
    first = np.argmax(~missing.any(axis=0), axis=0)
    late = [
        s
        for s in range(missing.shape[2])
        if first[s] > 0 and not missing[:, first[s] :, s].any() and missing[:, 0, s].any()
    ]
    return left_align(arrays, np.concatenate([complete, late]).astype(int)), len(complete)


def synthetic_bars(rows: int, columns: int, seed: int, lengths: list[int] | None = None) -> Bars:
    """A seeded geometric random walk with consistent OHLC and integer volumes.

    ``lengths`` cuts columns short (NaN below), as a block of shorter histories would be.
    """
    rng = np.random.default_rng(seed)
    start = rng.uniform(5.0, 500.0, columns)
    close = start * np.exp(np.cumsum(rng.normal(0.0003, 0.02, (rows, columns)), axis=0))
    open_ = np.vstack([start, close[:-1]]) * np.exp(rng.normal(0.0, 0.005, (rows, columns)))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.01, (rows, columns))))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.01, (rows, columns))))
    volume = np.round(rng.lognormal(13.0, 1.0, (rows, columns)))
    arrays = {"open": open_, "high": high, "low": low, "close": close, "volume": volume}
    lengths_ = np.full(columns, rows) if lengths is None else np.asarray(lengths)
    for name in FIELDS:
        for s, n in enumerate(lengths_):
            arrays[name][n:, s] = np.nan
    return Bars(**arrays, lengths=lengths_)


def one_column(close: np.ndarray, spread: float = 0.0, volume: float = 1000.0) -> Bars:
    """A single-symbol block from a close path: high/low ``spread`` around it."""
    close = np.asarray(close, dtype=np.float64)[:, None]
    return Bars(
        open=close.copy(),
        high=close + spread,
        low=close - spread,
        close=close,
        volume=np.full_like(close, volume),
        lengths=np.array([len(close)]),
    )


# ---------------------------------------------------------------------------------------
# Parity with TA-Lib


def test_sample_has_complete_and_late_listed_symbols() -> None:
    bars, complete = sample_bars()
    assert complete >= 50
    late = bars.lengths[complete:]
    assert len(late) >= 5 and (late < bars.close.shape[0]).all()
    for s in range(bars.close.shape[1]):
        n = bars.lengths[s]
        assert not np.isnan(bars.close[:n, s]).any() and np.isnan(bars.close[n:, s]).all()


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_real_sample_matches_talib(spec: Spec) -> None:
    bars, _ = sample_bars()
    assert_matches_talib(spec, bars)


# 40 full columns, then columns cut short: some long, some shorter than SMA 200's window, some
# shorter than every look-back (20 bars, 10 bars, 1 bar).
SYNTHETIC_LENGTHS = [600] * 40 + [599, 450, 300, 201, 200, 199, 150, 60, 34, 33, 28, 27, 20, 10, 1]


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_synthetic_walk_with_mixed_lengths_matches_talib(spec: Spec) -> None:
    bars = synthetic_bars(600, len(SYNTHETIC_LENGTHS), seed=7, lengths=SYNTHETIC_LENGTHS)
    assert_matches_talib(spec, bars)


def test_short_columns_are_nan_where_talib_is() -> None:
    bars = synthetic_bars(600, len(SYNTHETIC_LENGTHS), seed=7, lengths=SYNTHETIC_LENGTHS)
    short = SYNTHETIC_LENGTHS.index(20)
    long = SYNTHETIC_LENGTHS.index(600)
    sma200 = ind.sma(bars.close, 200)
    assert np.isnan(sma200[:20, short]).all()
    assert np.isnan(sma200[:199, long]).all() and not np.isnan(sma200[199:, long]).any()
    adx = ind.adx(bars.high, bars.low, bars.close)
    assert np.isnan(adx[:20, short]).all() and not np.isnan(adx[27:, long]).any()
    sma10 = ind.sma(bars.close, 10)
    assert np.isnan(sma10[:9, short]).all() and not np.isnan(sma10[9:20, short]).any()


def test_tail_after_a_column_end_leaks_nowhere() -> None:
    """Whatever lies below a column's end changes neither its prefix nor other columns."""
    bars = synthetic_bars(300, 6, seed=3)
    # column 2 ends at row 150: NaN below it, or wild numbers below it
    cut = {f: getattr(bars, f).copy() for f in FIELDS}
    garbage = {f: getattr(bars, f).copy() for f in FIELDS}
    rng = np.random.default_rng(0)
    for f in FIELDS:
        cut[f][150:, 2] = np.nan
        garbage[f][150:, 2] = rng.uniform(-1e6, 1e6, 150)
    for spec in SPECS:
        full = as_tuple(spec.ours(bars))
        with_nan = as_tuple(spec.ours(Bars(**cut, lengths=bars.lengths)))
        with_junk = as_tuple(spec.ours(Bars(**garbage, lengths=bars.lengths)))
        for a, b, c in zip(full, with_nan, with_junk, strict=True):
            others = [0, 1, 3, 4, 5]
            np.testing.assert_array_equal(b[:, others], a[:, others], err_msg=spec.name)
            np.testing.assert_array_equal(c[:, others], a[:, others], err_msg=spec.name)
            np.testing.assert_array_equal(b[:150, 2], a[:150, 2], err_msg=spec.name)
            np.testing.assert_array_equal(c[:150, 2], a[:150, 2], err_msg=spec.name)


def test_strided_and_fortran_ordered_inputs_give_the_same_results() -> None:
    bars = synthetic_bars(260, 12, seed=11)
    wide = synthetic_bars(260, 24, seed=11)
    for f in FIELDS:  # make columns 0, 2, 4... of `wide` equal to `bars`
        getattr(wide, f)[:, ::2] = getattr(bars, f)
    strided = Bars(**{f: getattr(wide, f)[:, ::2] for f in FIELDS}, lengths=bars.lengths)
    fortran = Bars(**{f: np.asfortranarray(getattr(bars, f)) for f in FIELDS}, lengths=bars.lengths)
    for spec in SPECS:
        expected = as_tuple(spec.ours(bars))
        for other in (strided, fortran):
            for a, b in zip(expected, as_tuple(spec.ours(other)), strict=True):
                np.testing.assert_array_equal(b, a, err_msg=spec.name)


def test_bad_bars_with_high_below_low_still_match_talib_true_range() -> None:
    bars = synthetic_bars(120, 8, seed=5)
    high, low = bars.high.copy(), bars.low.copy()
    rows = np.arange(20, 120, 7)
    high[rows, 3], low[rows, 3] = low[rows, 3], high[rows, 3]  # inverted bars
    low[50, 5] = high[50, 5] + 1.0
    bad = Bars(bars.open, high, low, bars.close, bars.volume, bars.lengths)
    for spec in SPECS:
        if spec.name.startswith(("atr", "adx")):
            assert_matches_talib(spec, bad)


# ---------------------------------------------------------------------------------------
# TA-Lib's conventions on degenerate series


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_flat_series_matches_talib(spec: Spec) -> None:
    assert_matches_talib(spec, one_column(np.full(300, 42.17)))


def test_flat_series_values() -> None:
    flat = one_column(np.full(300, 42.17))
    assert (ind.rsi(flat.close)[14:, 0] == 0.0).all()  # TA-Lib's RSI of no movement: 0
    assert (ind.adx(flat.high, flat.low, flat.close)[27:, 0] == 0.0).all()
    upper, middle, lower = ind.bollinger(flat.close)
    assert (upper[19:, 0] == middle[19:, 0]).all() and (lower[19:, 0] == middle[19:, 0]).all()
    np.testing.assert_allclose(middle[19:, 0], 42.17, rtol=1e-15)
    assert (ind.atr(flat.high, flat.low, flat.close)[14:, 0] == 0.0).all()
    assert (ind.returns(flat.close, 5)[5:, 0] == 0.0).all()


def test_rsi_of_only_rises_is_100_and_of_only_falls_is_0() -> None:
    rising = one_column(np.linspace(10.0, 60.0, 80))
    falling = one_column(np.linspace(60.0, 10.0, 80))
    assert (ind.rsi(rising.close)[14:, 0] == 100.0).all()
    assert (ind.rsi(falling.close)[14:, 0] == 0.0).all()
    assert_matches_talib(BY_NAME["rsi_14"], rising)
    assert_matches_talib(BY_NAME["rsi_14"], falling)


def wake_then_sleep(moving: int, flat: int, seed: int) -> np.ndarray:
    """A walk that moves for ``moving`` bars, then stays exactly flat for ``flat`` bars."""
    rng = np.random.default_rng(seed)
    path = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, moving)))
    return np.concatenate([path, np.full(flat, path[-1])])


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_long_flat_stretch_after_movement_matches_talib(spec: Spec) -> None:
    """A long halt: Wilder averages decay towards 0 (far below TA-Lib's old 1e-8 "zero")
    and Bollinger windows go exactly flat, in a block where other columns keep moving."""
    moving = synthetic_bars(700, 3, seed=2)
    halted = [wake_then_sleep(60, 640, seed) for seed in (1, 2)]
    close = np.column_stack([moving.close, *halted])
    spread = np.column_stack([moving.high - moving.close, *(0.0 * h for h in halted)])
    bars = Bars(
        open=close.copy(),
        high=close + spread,
        low=close - np.abs(spread),
        close=close,
        volume=np.column_stack([moving.volume, np.full((700, 2), 1000.0)]),
        lengths=np.full(5, 700),
    )
    assert_matches_talib(spec, bars)


def test_adx_holds_its_value_on_bars_without_a_dx() -> None:
    """After real movement, bars whose DIs sum below 1e-14 leave the ADX where it was."""
    rng = np.random.default_rng(6)
    moving = 1.0 + np.cumsum(rng.normal(0.0, 0.01, 60))
    creeping = moving[-1] + 4 * np.finfo(float).eps * np.arange(1, 541)
    high = np.concatenate([moving + 0.02, creeping])[:, None]
    low = np.concatenate([moving - 0.02, np.full(540, 0.5)])[:, None]
    close = np.concatenate([moving, np.full(540, -1000.0)])[:, None]
    bars = Bars(close.copy(), high, low, close, np.ones_like(close), np.array([600]))
    adx = ind.adx(bars.high, bars.low, bars.close)[:, 0]
    assert adx[-1] > 1.0 and adx[-1] == adx[-100]  # frozen, not decayed towards 0
    assert_matches_talib(BY_NAME["adx_14"], bars)


def test_long_flat_stretch_keeps_rsi_and_adx_alive() -> None:
    """TA-Lib 0.8 tests RSI's gain + loss and ADX's TR sum exactly (older versions zeroed
    anything below 1e-8), so a long halt freezes RSI and lets ADX converge, not drop."""
    bars = one_column(wake_then_sleep(60, 640, seed=1))
    rsi = ind.rsi(bars.close)[:, 0]
    assert rsi[100] > 0.0 and rsi[-1] == pytest.approx(rsi[100], rel=1e-12)
    adx = ind.adx(bars.high, bars.low, bars.close)[:, 0]
    assert adx[-1] > 0.0 and adx[-1] != adx[100]
    upper, middle, lower = (band[:, 0] for band in ind.bollinger(bars.close))
    assert upper[70] > middle[70] > lower[70]  # the halt starts on row 60
    assert (upper[79:] == middle[79:]).all() and (lower[79:] == middle[79:]).all()


def test_finely_quoted_prices_scale_like_coarse_ones() -> None:
    """Nothing is tested against an absolute "zero" that depends on the price unit."""
    bars = synthetic_bars(300, 4, seed=12)
    tiny = Bars(*(getattr(bars, f) * 1e-9 for f in FIELDS[:4]), bars.volume, bars.lengths)
    np.testing.assert_allclose(ind.rsi(tiny.close), ind.rsi(bars.close), rtol=1e-12)
    np.testing.assert_allclose(
        ind.adx(tiny.high, tiny.low, tiny.close),
        ind.adx(bars.high, bars.low, bars.close),
        rtol=1e-12,
    )
    for small, large in zip(ind.bollinger(tiny.close), ind.bollinger(bars.close), strict=True):
        np.testing.assert_allclose(small, large * 1e-9, rtol=1e-12)
    for spec in SPECS:
        assert_matches_talib(spec, tiny)


def test_adx_skips_bars_whose_directional_indicators_sum_below_1e14() -> None:
    """Highs creep up by 4 ulps a bar against a true range of ~1000: +DI ~ 1e-16."""
    rows = 80
    high = 1.0 + 4 * np.finfo(float).eps * np.arange(rows)
    bars = Bars(
        open=np.full((rows, 1), 0.5),
        high=high[:, None],
        low=np.full((rows, 1), 0.5),
        close=np.full((rows, 1), -1000.0),
        volume=np.ones((rows, 1)),
        lengths=np.array([rows]),
    )
    assert (ind.adx(bars.high, bars.low, bars.close)[27:, 0] == 0.0).all()
    assert_matches_talib(BY_NAME["adx_14"], bars)
    closer = Bars(
        bars.open, bars.high, bars.low, np.full((rows, 1), -1.0), bars.volume, bars.lengths
    )
    assert (ind.adx(closer.high, closer.low, closer.close)[27:, 0] == 100.0).all()
    assert_matches_talib(BY_NAME["adx_14"], closer)


def test_flat_start_then_movement_matches_talib() -> None:
    """No directional movement at all for the first bars: TA-Lib skips those DX."""
    rng = np.random.default_rng(4)
    close = np.concatenate([np.full(40, 20.0), 20.0 * np.exp(np.cumsum(rng.normal(0, 0.02, 260)))])
    flat = one_column(close)
    high = np.maximum(flat.high, flat.close * 1.01)
    high[:40] = 20.0  # no range at all for the first 40 bars
    bars = Bars(flat.open, high, flat.low, flat.close, flat.volume, flat.lengths)
    for spec in SPECS:
        assert_matches_talib(spec, bars)


def test_period_longer_than_history_is_all_nan() -> None:
    bars = synthetic_bars(30, 4, seed=9)
    for result in (
        ind.sma(bars.close, 31),
        ind.ema(bars.close, 40),
        ind.rsi(bars.close, 30),
        ind.atr(bars.high, bars.low, bars.close, 30),
        ind.adx(bars.high, bars.low, bars.close, 16),
        ind.rolling_max(bars.close, 31),
        ind.returns(bars.close, 30),
        ind.relative_volume(bars.volume, 31),
        ind.dollar_volume(bars.close, bars.volume, 31),
        *ind.macd(bars.close, 12, 26, 6),
        *ind.bollinger(bars.close, 31),
    ):
        assert result.shape == (30, 4) and np.isnan(result).all()
    assert not np.isnan(ind.sma(bars.close, 30)[29]).any()  # exactly enough rows: one value


def test_empty_universe_and_no_rows() -> None:
    empty = np.empty((50, 0))
    assert ind.sma(empty, 5).shape == (50, 0)
    assert ind.adx(empty, empty, empty).shape == (50, 0)
    assert all(out.shape == (50, 0) for out in ind.macd(empty))
    assert ind.rsi(np.empty((0, 3))).shape == (0, 3)


# ---------------------------------------------------------------------------------------
# Hand-checked values and conventions of our own


def test_small_hand_computed_values() -> None:
    close = np.array([[10.0], [11.0], [12.0], [9.0], [12.0]])
    np.testing.assert_array_equal(ind.sma(close, 2)[:, 0], [np.nan, 10.5, 11.5, 10.5, 10.5])
    np.testing.assert_allclose(
        ind.ema(close, 3)[:, 0], [np.nan, np.nan, 11.0, 10.0, 11.0], rtol=1e-15
    )
    np.testing.assert_array_equal(ind.rolling_max(close, 3)[:, 0], [np.nan, np.nan, 12, 12, 12])
    np.testing.assert_allclose(
        ind.returns(close, 2)[:, 0], [np.nan, np.nan, 0.2, 9 / 11 - 1, 0.0], rtol=1e-15
    )
    # RSI(2): gains 1, 1 -> average gain 1, loss 0 -> 100; then loss 3: (1*1+0)/2=0.5 gain,
    # (0*1+3)/2=1.5 loss -> 25; then gain 3: (0.5+3)/2=1.75, 1.5/2=0.75 -> 70
    np.testing.assert_allclose(ind.rsi(close, 2)[:, 0], [np.nan, np.nan, 100, 25, 70], rtol=1e-14)
    volume = np.array([[100.0], [300.0], [0.0], [200.0]])
    np.testing.assert_allclose(
        ind.relative_volume(volume, 2)[:, 0], [np.nan, 1.5, 0.0, 2.0], rtol=1e-15
    )
    np.testing.assert_allclose(
        ind.dollar_volume(close[:4], volume, 2)[:, 0], [np.nan, 2150.0, 1650.0, 900.0]
    )


def test_bollinger_uses_population_standard_deviation() -> None:
    close = np.array([[1.0], [2.0], [3.0], [4.0]])
    upper, middle, lower = ind.bollinger(close, 4, 2.0)
    sd = np.std([1.0, 2.0, 3.0, 4.0])  # ddof=0
    np.testing.assert_allclose(
        [upper[3, 0], middle[3, 0], lower[3, 0]], [2.5 + 2 * sd, 2.5, 2.5 - 2 * sd]
    )


def test_macd_seeds_its_fast_ema_late_like_talib() -> None:
    """TA-Lib's MACD is not EMA(12) - EMA(26): its fast EMA starts on row 25."""
    bars = synthetic_bars(120, 3, seed=8)
    line, signal, hist = ind.macd(bars.close)
    naive = ind.ema(bars.close, 12) - ind.ema(bars.close, 26)
    assert np.isnan(line[:33]).all() and not np.isnan(line[33:]).any()
    assert not np.allclose(line[33:40], naive[33:40], rtol=1e-6)
    np.testing.assert_allclose(hist[33:], line[33:] - signal[33:], rtol=1e-12, atol=1e-14)
    fast = np.mean(bars.close[14:26], axis=0)  # seeded on the mean of closes 14..25
    k = 2 / 13
    fast = bars.close[26] * k + fast * (1 - k)
    slow = ind.ema(bars.close, 26)[26]
    np.testing.assert_allclose(
        ind.macd(bars.close, 12, 26, 1)[0][26], fast - slow, rtol=1e-9, atol=1e-12
    )
    swapped = ind.macd(bars.close, 26, 12, 9)
    for a, b in zip(swapped, (line, signal, hist), strict=True):
        np.testing.assert_array_equal(a, b)


def test_returns_after_a_zero_close_are_nan_not_minus_one() -> None:
    close = np.array([[5.0, 2.0], [0.0, 3.0], [4.0, 4.0], [0.0, 0.0]])
    out = ind.returns(close, 1)
    np.testing.assert_array_equal(out[:, 0], [np.nan, -1.0, np.nan, -1.0])
    np.testing.assert_allclose(out[:, 1], [np.nan, 0.5, 1 / 3, -1.0], rtol=1e-15)


def test_relative_volume_is_nan_where_the_mean_is_zero() -> None:
    volume = np.array([[0.0, 5.0], [0.0, 5.0], [0.0, 0.0], [4.0, 0.0], [0.0, 0.0]])
    out = ind.relative_volume(volume, 2)
    np.testing.assert_array_equal(out[:, 0], [np.nan, np.nan, np.nan, 2.0, 0.0])
    np.testing.assert_array_equal(out[:, 1], [np.nan, 1.0, 0.0, np.nan, np.nan])
    # a zero mean under a non-zero volume (only possible with bad, negative volumes)
    odd = ind.relative_volume(np.array([[-4.0], [4.0], [2.0]]), 2)
    np.testing.assert_array_equal(odd[:, 0], [np.nan, np.nan, 2.0 / 3.0])


def test_outputs_are_new_float64_arrays() -> None:
    close = np.arange(1.0, 41.0).reshape(20, 2)
    out = ind.sma(close, 1)
    np.testing.assert_array_equal(out, close)
    assert out is not close and out.dtype == np.float64 and out.flags.c_contiguous
    ints = np.arange(40).reshape(20, 2) + 1
    np.testing.assert_array_equal(ind.sma(ints, 3), ind.sma(ints.astype(float), 3))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: ind.sma(x, 0), "period must be >= 1"),
        (lambda x: ind.rsi(x, 1), "period must be >= 2"),
        (lambda x: ind.rolling_max(x, 1), "period must be >= 2"),
        (lambda x: ind.bollinger(x, 1), "period must be >= 2"),
        (lambda x: ind.adx(x, x, x, 1), "period must be >= 2"),
        (lambda x: ind.macd(x, 1, 26, 9), "fast must be >= 2"),
        (lambda x: ind.macd(x, 12, 26, 0), "signal must be >= 1"),
        (lambda x: ind.returns(x, 0), "bars must be >= 1"),
        (lambda x: ind.sma(x[:, 0], 5), "2-D"),
        (lambda x: ind.atr(x, x[:, :1], x), "same shape"),
    ],
)
def test_invalid_arguments_are_refused(call: Callable[[np.ndarray], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(np.ones((30, 2)))


def test_period_must_be_an_integer() -> None:
    with pytest.raises(TypeError):
        ind.sma(np.ones((30, 2)), 2.5)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# The compiled kernels


def test_read_only_inputs_give_the_same_results() -> None:
    """Read-only arrays (a memory-mapped cache, say) are a separate numba type: same code."""
    bars = synthetic_bars(120, 7, seed=13)
    frozen = {f: getattr(bars, f).copy() for f in FIELDS}
    for array in frozen.values():
        array.flags.writeable = False
    read_only = Bars(**frozen, lengths=bars.lengths)
    for spec in SPECS:
        for a, b in zip(as_tuple(spec.ours(bars)), as_tuple(spec.ours(read_only)), strict=True):
            np.testing.assert_array_equal(b, a, err_msg=spec.name)


def test_threads_running_kernels_at_once_match_one_call() -> None:
    """The kernels release the GIL and keep no shared state: column slices computed by
    concurrent threads equal the whole block computed at once."""
    bars = synthetic_bars(400, 64, seed=17)
    slices = [slice(start, start + 8) for start in range(0, 64, 8)]
    for spec in SPECS:
        whole = as_tuple(spec.ours(bars))

        def part(columns: slice, spec: Spec = spec) -> tuple[np.ndarray, ...]:
            sliced = {f: getattr(bars, f)[:, columns] for f in FIELDS}
            return as_tuple(spec.ours(Bars(**sliced, lengths=bars.lengths[columns])))

        with ThreadPoolExecutor(4) as pool:
            parts = list(pool.map(part, slices))
        for k, output in enumerate(whole):
            joined = np.hstack([p[k] for p in parts])
            np.testing.assert_array_equal(joined, output, err_msg=spec.name)


def kernels() -> dict[str, numba.core.registry.CPUDispatcher]:
    return {
        name: value
        for name, value in vars(ind).items()
        if isinstance(value, numba.core.registry.CPUDispatcher) and name.endswith("_rows")
    }


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="numba JIT disabled")
def test_warm_up_compiles_every_kernel_into_the_disk_cache() -> None:
    """Each kernel is saved by numba's disk cache, so a new process (a scan worker) loads it
    in milliseconds instead of compiling it for seconds: nothing in a kernel may stop numba
    from caching it (that would also warn, which this suite turns into an error)."""
    ind.warm_up()
    assert kernels()
    for name, kernel in kernels().items():
        assert kernel.signatures, f"{name} was not compiled by warm_up"
        cache_path = kernel.stats.cache_path
        assert cache_path is not None, f"{name} is not cached"
        assert list(Path(cache_path).glob(f"indicators.{name}-*.nbi")), name
