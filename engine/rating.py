"""TechRating: a 0-100 score made of six named subscores, and a long trade plan.

Every subscore lies in [-3, 3], is reported on its own, and looks at conditions no other
subscore looks at (the original counted one trend condition twice and could never score
a downtrend below zero):

=============  ======  ==============================================================
subscore       weight  conditions (each a bounded term)
=============  ======  ==============================================================
trend          3       close vs SMA50, SMA50 vs SMA200, SMA20 vs SMA50: +1 / -1 each;
                       the sum is scaled by trend strength 0.5 + 0.5 * min(ADX14/25, 1)
momentum       3       MACD histogram / (0.25 ATR14), 21-bar return / 10 %,
                       5-bar return / 5 %: each clipped to [-1, 1]
volume         2       1.5 * (relative volume - 1), clipped to [-1.5, 3], signed by
                       the day's direction (heavy selling scores negative)
volatility     1       (3 % - ATR14 %) / 1 %, clipped to [-3, 3]: calm is better
oscillator     1       RSI14 zone: 50-70 +2, 70-80 +1, >= 80 -2, 40-50 0,
                       30-40 -1, < 30 -2
breakout       1       distance from the 52-week high: >= -2 % +2, >= -5 % +1,
                       >= -20 % 0, >= -35 % -1, else -2; plus close above the upper
                       Bollinger band +1, below the lower -1
=============  ======  ==============================================================

``raw = 3 trend + 3 momentum + 2 volume + volatility + oscillator + breakout`` lies in
[-33, 33] and ``tech_rating = 50 + 50 * raw / 33``, so 0-100 is the whole range and 50 is
neutral. A condition whose indicator is missing (too short a history, e.g. no SMA 200
before 200 bars) contributes 0. Signal bands: >= 75 Strong Buy, >= 60 Buy, > 40
Neutral, > 25 Sell, else Strong Sell.

The trade plan is for a long position: ``stop`` is the lower of the 10-bar low and
``close - k * ATR`` (k = 1.0 day, 1.5 swing, 2.5 position), kept between 0.5 and 3 ATR
below the close; ``entry = close + 0.1 ATR``; ``target = entry + target_rr * (entry -
stop)``; ``position_size = floor(account_size * risk_pct % / (entry - stop))`` shares,
capped at 5 % of the 20-bar average dollar volume. ATR is floored at 0.1 % of the close
so a flat series still gets a finite plan: no field of a plan is ever NaN.
"""

from __future__ import annotations

import numpy as np
from technic.engine.fields import SIGNALS

SUBSCORE_WEIGHTS: dict[str, float] = {
    "trend_score": 3.0,
    "momentum_score": 3.0,
    "volume_score": 2.0,
    "volatility_score": 1.0,
    "oscillator_score": 1.0,
    "breakout_score": 1.0,
}
MAX_RAW = 3.0 * sum(SUBSCORE_WEIGHTS.values())
STOP_ATR_MULTIPLE = {"day": 1.0, "swing": 1.5, "position": 2.5}


def _term(value: np.ndarray) -> np.ndarray:
    """A missing indicator contributes nothing rather than poisoning the sum."""
    return np.nan_to_num(value, nan=0.0)


def _above(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """+1 / -1 / 0 for left above / below / equal to right; 0 where either is missing."""
    comparable = np.isfinite(left) & np.isfinite(right)
    return np.where(comparable, np.sign(left - right), 0.0)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return numerator / denominator


def subscores(ind: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The six subscores for arrays of last-bar indicator values (one entry per symbol)."""
    close = ind["close"]
    strength = 0.5 + 0.5 * np.clip(_term(ind["adx14"]) / 25.0, 0.0, 1.0)
    trend = (
        _above(close, ind["sma50"])
        + _above(ind["sma50"], ind["sma200"])
        + _above(ind["sma20"], ind["sma50"])
    ) * strength

    momentum = (
        _term(np.clip(_ratio(ind["macd_hist"], 0.25 * ind["atr14"]), -1, 1))
        + _term(np.clip(ind["ret_21d"] / 0.10, -1, 1))
        + _term(np.clip(ind["ret_5d"] / 0.05, -1, 1))
    )

    direction = np.sign(_term(ind["ret_1d"]))
    volume = _term(np.clip(1.5 * (ind["rel_volume"] - 1.0), -1.5, 3.0)) * direction

    volatility = _term(np.clip((0.03 - ind["atr_pct"]) / 0.01, -3, 3))

    rsi = ind["rsi14"]
    oscillator = np.select(
        [rsi >= 80, rsi >= 70, rsi >= 50, rsi >= 40, rsi >= 30, rsi < 30],
        [-2.0, 1.0, 2.0, 0.0, -1.0, -2.0],
        default=0.0,
    )

    from_high = ind["pct_from_52w_high"]
    near_high = np.where(from_high < -0.35, -2.0, 0.0) + np.select(
        [from_high >= -0.02, from_high >= -0.05, from_high >= -0.20, from_high >= -0.35],
        [2.0, 1.0, 0.0, -1.0],
        default=0.0,
    )
    band = np.select([close > ind["bb_upper"], close < ind["bb_lower"]], [1.0, -1.0], default=0.0)

    return {
        "trend_score": trend,
        "momentum_score": momentum,
        "volume_score": volume,
        "volatility_score": volatility,
        "oscillator_score": oscillator,
        "breakout_score": near_high + band,
    }


def tech_rating(scores: dict[str, np.ndarray]) -> np.ndarray:
    raw = sum(SUBSCORE_WEIGHTS[name] * scores[name] for name in SUBSCORE_WEIGHTS)
    return np.clip(50.0 + 50.0 * raw / MAX_RAW, 0.0, 100.0)


def signal(rating: np.ndarray) -> np.ndarray:
    """The bands mirror each other around 50: 60 is Buy and 40 is Sell, 75 and 25 the strong
    ones, so a rating and its reflection always get opposite signals."""
    conditions = [rating >= 75.0, rating >= 60.0, rating > 40.0, rating > 25.0]
    return np.select(conditions, list(SIGNALS[:-1]), default=SIGNALS[-1])


def trade_plan(
    *,
    close: np.ndarray,
    atr: np.ndarray,
    recent_low: np.ndarray,
    dollar_volume: np.ndarray,
    trade_style: str,
    account_size: float,
    risk_pct: float,
    target_rr: float,
) -> dict[str, np.ndarray]:
    """A long plan per symbol; every output is finite for a finite positive close."""
    atr = np.fmax(np.nan_to_num(atr, nan=0.0), 0.001 * close)
    multiple = STOP_ATR_MULTIPLE[trade_style]
    stop = np.fmin(np.nan_to_num(recent_low, nan=np.inf), close - multiple * atr)
    stop = np.clip(stop, close - 3.0 * atr, close - 0.5 * atr)
    stop = np.maximum(stop, 0.01 * close)
    entry = close + 0.1 * atr
    risk_per_share = entry - stop
    target = entry + target_rr * risk_per_share
    by_risk = np.floor(account_size * risk_pct / 100.0 / risk_per_share)
    by_liquidity = np.floor(0.05 * np.nan_to_num(dollar_volume, nan=0.0) / entry)
    return {
        "entry": entry,
        "stop": stop,
        "target": target,
        "reward_risk": (target - entry) / risk_per_share,
        "position_size": np.maximum(np.minimum(by_risk, by_liquidity), 0.0),
    }
