"""engine.rating on its own: the subscores' bounds, the 0-100 scale, the signal bands at their
edges and the trade plan's stop, target and position-size cap, as the README states them."""

from __future__ import annotations

import numpy as np
import pytest
from technic.engine import rating

INDICATORS = (
    "close",
    "sma20",
    "sma50",
    "sma200",
    "adx14",
    "macd_hist",
    "atr14",
    "atr_pct",
    "ret_1d",
    "ret_5d",
    "ret_21d",
    "rel_volume",
    "rsi14",
    "pct_from_52w_high",
    "bb_upper",
    "bb_lower",
)


def one(**values: float) -> dict[str, np.ndarray]:
    """Indicators of one symbol; anything not given is missing (NaN)."""
    return {name: np.array([values.get(name, np.nan)], dtype=np.float64) for name in INDICATORS}


STRONG_UPTREND = one(
    close=110.0, sma20=105.0, sma50=100.0, sma200=90.0, adx14=40.0, macd_hist=5.0, atr14=1.0,
    atr_pct=0.0, ret_1d=0.02, ret_5d=0.10, ret_21d=0.30, rel_volume=5.0, rsi14=60.0,
    pct_from_52w_high=0.0, bb_upper=100.0, bb_lower=80.0,
)  # fmt: skip
STRONG_DOWNTREND = one(
    close=80.0, sma20=90.0, sma50=100.0, sma200=110.0, adx14=40.0, macd_hist=-5.0, atr14=1.0,
    atr_pct=0.09, ret_1d=-0.02, ret_5d=-0.10, ret_21d=-0.30, rel_volume=5.0, rsi14=20.0,
    pct_from_52w_high=-0.60, bb_upper=100.0, bb_lower=90.0,
)  # fmt: skip


def test_every_subscore_at_its_top_gives_100_and_strong_buy() -> None:
    scores = rating.subscores(STRONG_UPTREND)
    assert {name: float(value[0]) for name, value in scores.items()} == {
        "trend_score": 3.0,
        "momentum_score": 3.0,
        "volume_score": 3.0,
        "volatility_score": 3.0,
        "oscillator_score": 2.0,
        "breakout_score": 3.0,
    }
    assert float(rating.tech_rating(scores)[0]) == pytest.approx(50 + 50 * 32 / 33)
    assert rating.signal(rating.tech_rating(scores))[0] == "Strong Buy"


def test_a_downtrend_scores_below_zero_on_every_count() -> None:
    scores = rating.subscores(STRONG_DOWNTREND)
    assert float(scores["trend_score"][0]) == -3.0  # the original could never go below 0
    assert float(scores["momentum_score"][0]) == -3.0
    assert float(scores["volume_score"][0]) == -3.0  # heavy selling counts against
    assert float(scores["volatility_score"][0]) == -3.0
    assert float(scores["oscillator_score"][0]) == -2.0
    assert float(scores["breakout_score"][0]) == -3.0
    value = rating.tech_rating(scores)
    assert float(value[0]) == pytest.approx(50 + 50 * (-9 - 9 - 6 - 3 - 2 - 3) / 33)
    assert rating.signal(value)[0] == "Strong Sell"


def test_a_weak_trend_counts_half() -> None:
    weak = {**STRONG_UPTREND, "adx14": np.array([0.0])}
    assert float(rating.subscores(weak)["trend_score"][0]) == 1.5
    missing = {**STRONG_UPTREND, "adx14": np.array([np.nan])}
    assert float(rating.subscores(missing)["trend_score"][0]) == 1.5


def test_missing_indicators_contribute_nothing() -> None:
    scores = rating.subscores(one(close=100.0))
    assert all(float(value[0]) == 0.0 for value in scores.values())
    assert float(rating.tech_rating(scores)[0]) == 50.0
    assert rating.signal(rating.tech_rating(scores))[0] == "Neutral"


def test_subscores_stay_in_bounds_and_the_rating_on_its_scale_for_wild_inputs() -> None:
    generator = np.random.default_rng(7)
    count = 20_000
    wild = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e308, -1e308, 1e-308])
    indicators = {}
    for name in INDICATORS:
        values = generator.normal(0.0, 100.0, count)
        special = generator.random(count) < 0.1
        values[special] = generator.choice(wild, int(special.sum()))
        indicators[name] = values
    with np.errstate(all="ignore"):
        scores = rating.subscores(indicators)
        value = rating.tech_rating(scores)
    for name, score in scores.items():
        assert np.isfinite(score).all(), name
        assert (np.abs(score) <= 3.0).all(), name
    assert np.isfinite(value).all() and (value >= 0).all() and (value <= 100).all()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (100.0, "Strong Buy"),
        (75.0, "Strong Buy"),
        (np.nextafter(75.0, 0), "Buy"),
        (60.0, "Buy"),
        (np.nextafter(60.0, 0), "Neutral"),
        (50.0, "Neutral"),
        (np.nextafter(40.0, 100), "Neutral"),
        (40.0, "Sell"),
        (np.nextafter(25.0, 100), "Sell"),
        (25.0, "Strong Sell"),
        (0.0, "Strong Sell"),
    ],
)
def test_signal_bands_are_symmetric_around_50(value: float, expected: str) -> None:
    # README: >= 75 Strong Buy, >= 60 Buy, > 40 Neutral, > 25 Sell, else Strong Sell; so 60
    # and 40 lie as far from neutral and are both out of the Neutral band.
    assert rating.signal(np.array([value]))[0] == expected


def plan(**overrides: object) -> dict[str, float]:
    arguments: dict[str, object] = {
        "close": np.array([100.0]),
        "atr": np.array([2.0]),
        "recent_low": np.array([96.0]),
        "dollar_volume": np.array([1e9]),
        "trade_style": "swing",
        "account_size": 100_000.0,
        "risk_pct": 1.0,
        "target_rr": 2.0,
        **overrides,
    }
    return {name: float(value[0]) for name, value in rating.trade_plan(**arguments).items()}


def test_trade_plan_stop_entry_target_and_size() -> None:
    result = plan()
    assert result["entry"] == pytest.approx(100.2)
    assert result["stop"] == pytest.approx(96.0)  # the 10-bar low is below close - 1.5 ATR
    assert result["target"] == pytest.approx(100.2 + 2 * 4.2)
    assert result["reward_risk"] == pytest.approx(2.0)
    assert result["position_size"] == np.floor(1000 / 4.2)


def test_stop_is_kept_between_half_and_three_atr_below_the_close() -> None:
    assert plan(recent_low=np.array([10.0]))["stop"] == pytest.approx(94.0)
    assert plan(recent_low=np.array([99.9]), trade_style="day")["stop"] == pytest.approx(98.0)
    assert plan(recent_low=np.array([99.9]), atr=np.array([0.1]))["stop"] == pytest.approx(99.85)


def test_position_size_is_capped_by_five_percent_of_dollar_volume() -> None:
    capped = plan(account_size=1e12, dollar_volume=np.array([2_004_000.0]))
    assert capped["position_size"] == np.floor(0.05 * 2_004_000 / 100.2)
    assert plan(dollar_volume=np.array([np.nan]))["position_size"] == 0.0


def test_a_flat_series_still_gets_a_finite_plan() -> None:
    result = plan(atr=np.array([0.0]), recent_low=np.array([np.nan]))
    assert all(np.isfinite(value) for value in result.values())
    assert result["stop"] < result["entry"] < result["target"]
