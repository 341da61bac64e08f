"""The columns of a result row, in order: what a scan produces and every export writes.

Kept apart from the computation so that readers of results (the server's views, the CLI's
CSV) know the columns without importing numba and pandas.
"""

from __future__ import annotations

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

ROW_FIELDS: tuple[str, ...] = (
    "symbol",
    "name",
    "sector",
    "industry",
    "as_of",
    "close",
    "tech_rating",
    "signal",
    *NUMERIC_FIELDS[2:],
)

# The signals a rating maps to, from best to worst: the order every sort by signal follows.
SIGNALS: tuple[str, ...] = ("Strong Buy", "Buy", "Neutral", "Sell", "Strong Sell")
