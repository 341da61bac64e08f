"""One unit of scanning work: a contiguous range of symbols, computed in a worker.

A chunk job carries only the cache location, a column range and the window rows: the
worker maps the cached block and reads its own columns, so no price array is pickled in
either direction. What comes back is the last-bar value of every indicator, subscore and
plan field for the symbols that could be rated, plus the reasons for those that could not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from technic.engine import indicators, rating
from technic.engine.block import PRICE_FIELDS
from technic.engine.cache import read_block
from technic.engine.cleaning import clean
from technic.engine.fields import NUMERIC_FIELDS

RECENT_LOW_BARS = 10
WEEKS_52_BARS = 252


@dataclass(frozen=True)
class ChunkJob:
    block_path: str
    column_start: int
    column_stop: int
    row_start: int
    row_stop: int
    trade_style: str
    account_size: float
    risk_pct: float
    target_rr: float


@dataclass
class ChunkResult:
    """``columns`` are block columns of the rated symbols; ``values`` one array per field."""

    column_start: int
    column_stop: int
    columns: np.ndarray
    last_row: np.ndarray
    values: dict[str, np.ndarray]
    failures: dict[int, str]
    partial_rows: int
    inconsistent_rows: int
    gap_rows: int


def last_values(series: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each column's value on its own last bar (left-aligned columns end at different rows)."""
    if series.shape[1] == 0:
        return np.empty(0)
    return series[lengths - 1, np.arange(series.shape[1])]


def trailing_window(series: np.ndarray, lengths: np.ndarray, bars: int) -> np.ndarray:
    """The last ``bars`` rows of each column, ending on its own last bar; NaN before it starts.

    Why: a windowed indicator's last value depends on its window alone, so computing it on
    just that window gives the same number as on the whole history, at a fraction of the
    cost. When every column has the full history this is a view, not a copy.
    """
    rows, _width = series.shape
    if rows >= bars and (lengths == rows).all():
        return series[rows - bars :]
    offsets = lengths[None, :] - bars + np.arange(bars)[:, None]
    window = np.take_along_axis(series, np.clip(offsets, 0, max(rows - 1, 0)), axis=0)
    window[offsets < 0] = np.nan
    return window


def _last(window: np.ndarray) -> np.ndarray:
    return window[-1] if window.shape[0] else np.full(window.shape[1], np.nan)


def indicator_values(bars: dict[str, np.ndarray], lengths: np.ndarray) -> dict[str, np.ndarray]:
    """The indicator set on left-aligned ``[T, S]`` bars, as each symbol's last-bar values.

    Recursive indicators (EMA, RSI, MACD, ATR, ADX) depend on the whole history and run over
    it; windowed ones (SMA, Bollinger, returns, volume ratios, highs and lows) run on their
    trailing window only.
    """
    high, low, close, volume = (bars[name] for name in ("high", "low", "close", "volume"))
    macd_line, macd_signal, macd_hist = indicators.macd(close, 12, 26, 9)
    recursive = {
        "ema12": indicators.ema(close, 12),
        "ema26": indicators.ema(close, 26),
        "rsi14": indicators.rsi(close, 14),
        "macd": macd_line,
        "macd_signal": macd_signal,
        "macd_hist": macd_hist,
        "atr14": indicators.atr(high, low, close, 14),
        "adx14": indicators.adx(high, low, close, 14),
    }
    values = {name: last_values(array, lengths) for name, array in recursive.items()}

    def window(series: np.ndarray, size: int) -> np.ndarray:
        return trailing_window(series, lengths, size)

    values["close"] = last_values(close, lengths)
    for period in (20, 50, 200):
        values[f"sma{period}"] = _last(indicators.sma(window(close, period), period))
    upper, middle, lower = indicators.bollinger(window(close, 20), 20, 2.0)
    values.update(bb_upper=_last(upper), bb_middle=_last(middle), bb_lower=_last(lower))
    for bars_back, name in ((1, "ret_1d"), (5, "ret_5d"), (21, "ret_21d")):
        values[name] = _last(indicators.returns(window(close, bars_back + 1), bars_back))
    values["rel_volume"] = _last(indicators.relative_volume(window(volume, 20), 20))
    values["dollar_volume_20d"] = _last(
        indicators.dollar_volume(window(close, 20), window(volume, 20), 20)
    )
    values["high_52w"] = np.fmax.reduce(window(high, WEEKS_52_BARS), axis=0)
    values["recent_low"] = np.fmin.reduce(window(low, RECENT_LOW_BARS), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        values["atr_pct"] = values["atr14"] / values["close"]
        values["pct_from_52w_high"] = values["close"] / values["high_52w"] - 1.0
    return values


def scan_chunk(job: ChunkJob) -> ChunkResult:
    """Run in a worker process: read, clean, compute, rate and plan one column range."""
    block, _ = read_block(Path(job.block_path))
    window = (slice(job.row_start, job.row_stop), slice(job.column_start, job.column_stop))
    raw = {name: np.array(block.field(name)[window], dtype=np.float64) for name in PRICE_FIELDS}
    cleaned = clean(raw["open"], raw["high"], raw["low"], raw["close"], raw["volume"])
    bars = {name: getattr(cleaned, name) for name in PRICE_FIELDS}
    values = indicator_values(bars, cleaned.lengths)
    scores = rating.subscores(values)
    values.update(scores)
    values["tech_rating"] = rating.tech_rating(scores)
    values.update(
        rating.trade_plan(
            close=values["close"],
            atr=values["atr14"],
            recent_low=values.pop("recent_low"),
            dollar_volume=values["dollar_volume_20d"],
            trade_style=job.trade_style,
            account_size=job.account_size,
            risk_pct=job.risk_pct,
            target_rr=job.target_rr,
        )
    )
    offset = job.column_start
    return ChunkResult(
        column_start=job.column_start,
        column_stop=job.column_stop,
        columns=cleaned.columns + offset,
        last_row=cleaned.last_row + job.row_start,
        values={name: values[name] for name in NUMERIC_FIELDS},
        failures={column + offset: reason for column, reason in cleaned.failures.items()},
        partial_rows=cleaned.partial_rows,
        inconsistent_rows=cleaned.inconsistent_rows,
        gap_rows=cleaned.gap_rows,
    )
