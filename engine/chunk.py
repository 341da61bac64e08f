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

from engine import indicators, rating
from engine.block import PRICE_FIELDS
from engine.cache import read_block
from engine.cleaning import clean

NUMERIC_FIELDS: tuple[str, ...] = (
    "close",
    "tech_rating",
    "trend_score",
    "momentum_score",
    "volume_score",
    "volatility_score",
    "oscillator_score",
    "breakout_score",
    "sma20",
    "sma50",
    "sma200",
    "ema12",
    "ema26",
    "rsi14",
    "macd",
    "macd_signal",
    "macd_hist",
    "atr14",
    "atr_pct",
    "adx14",
    "bb_upper",
    "bb_middle",
    "bb_lower",
    "ret_1d",
    "ret_5d",
    "ret_21d",
    "rel_volume",
    "dollar_volume_20d",
    "high_52w",
    "pct_from_52w_high",
    "entry",
    "stop",
    "target",
    "reward_risk",
    "position_size",
)
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


def indicator_values(bars: dict[str, np.ndarray], lengths: np.ndarray) -> dict[str, np.ndarray]:
    """The full indicator set on left-aligned ``[T, S]`` bars, reduced to last-bar values."""
    high, low, close, volume = (bars[name] for name in ("high", "low", "close", "volume"))
    macd_line, macd_signal, macd_hist = indicators.macd(close, 12, 26, 9)
    bb_upper, bb_middle, bb_lower = indicators.bollinger(close, 20, 2.0)
    series = {
        "close": close,
        "sma20": indicators.sma(close, 20),
        "sma50": indicators.sma(close, 50),
        "sma200": indicators.sma(close, 200),
        "ema12": indicators.ema(close, 12),
        "ema26": indicators.ema(close, 26),
        "rsi14": indicators.rsi(close, 14),
        "macd": macd_line,
        "macd_signal": macd_signal,
        "macd_hist": macd_hist,
        "atr14": indicators.atr(high, low, close, 14),
        "adx14": indicators.adx(high, low, close, 14),
        "bb_upper": bb_upper,
        "bb_middle": bb_middle,
        "bb_lower": bb_lower,
        "ret_1d": indicators.returns(close, 1),
        "ret_5d": indicators.returns(close, 5),
        "ret_21d": indicators.returns(close, 21),
        "rel_volume": indicators.relative_volume(volume, 20),
        "dollar_volume_20d": indicators.dollar_volume(close, volume, 20),
    }
    values = {name: last_values(array, lengths) for name, array in series.items()}
    values["high_52w"] = _trailing(high, lengths, WEEKS_52_BARS, np.fmax.reduce)
    values["recent_low"] = _trailing(low, lengths, RECENT_LOW_BARS, np.fmin.reduce)
    with np.errstate(divide="ignore", invalid="ignore"):
        values["atr_pct"] = values["atr14"] / values["close"]
        values["pct_from_52w_high"] = values["close"] / values["high_52w"] - 1.0
    return values


def _trailing(series: np.ndarray, lengths: np.ndarray, bars: int, reduce) -> np.ndarray:
    """Reduce each column over its last ``bars`` bars (or all it has, if fewer).

    The 52-week high uses up to 252 bars so a symbol listed eight months ago still has
    one: the highest high it has printed.
    """
    if series.shape[1] == 0:
        return np.empty(0)
    depth = min(bars, series.shape[0])
    rows = lengths[None, :] - depth + np.arange(depth)[:, None]
    window = np.take_along_axis(series, np.maximum(rows, 0), axis=0)
    window[rows < 0] = np.nan
    return reduce(window, axis=0)


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
