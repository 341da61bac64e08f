"""The missing-data policy, on small hand-made blocks and on the real sample."""

from __future__ import annotations

import numpy as np
import pytest
from technic.engine.cleaning import clean
from technic.engine.sample import load_sample_block

NAN = np.nan


def block(rows: list[list[float]]) -> dict[str, np.ndarray]:
    """rows of (open, high, low, close, volume) for one symbol -> [W, 1] arrays."""
    array = np.array(rows, dtype=float)
    names = ("open", "high", "low", "close", "volume")
    return {name: array[:, [i]] for i, name in enumerate(names)}


def run(rows: list[list[float]], **kwargs):
    data = block(rows)
    return clean(data["open"], data["high"], data["low"], data["close"], data["volume"], **kwargs)


def test_complete_rows_are_left_exactly_as_they_were() -> None:
    rows = [[10 + i, 11 + i, 9 + i, 10.5 + i, 1000 + i] for i in range(25)]
    result = run(rows)
    assert result.failures == {}
    np.testing.assert_array_equal(result.close[:, 0], [r[3] for r in rows])
    np.testing.assert_array_equal(result.high[:, 0], [r[1] for r in rows])
    assert result.partial_rows == 0 and result.gap_rows == 0


def test_partial_row_is_completed_from_previous_close_and_present_prices() -> None:
    rows = [[10, 11, 9, 10, 100]] * 24 + [[NAN, NAN, 9.5, 10.4, 100]]
    result = run(rows)
    assert result.open[-1, 0] == 10.0  # previous close
    assert result.high[-1, 0] == 10.4  # highest price present
    assert result.low[-1, 0] == 9.5
    assert result.partial_rows == 1


def test_partial_first_row_opens_at_its_close() -> None:
    rows = [[NAN, NAN, NAN, 10.0, 100]] + [[10, 11, 9, 10, 100]] * 24
    result = run(rows)
    assert (result.open[0, 0], result.high[0, 0], result.low[0, 0]) == (10.0, 10.0, 10.0)


def test_gap_becomes_flat_bar_at_previous_close_with_zero_volume() -> None:
    rows = [[10, 11, 9, 10 + i, 100] for i in range(12)]
    rows.append([NAN, NAN, NAN, NAN, NAN])
    rows += [[10, 11, 9, 30, 100] for _ in range(12)]
    result = run(rows)
    assert result.failures == {}
    gap = 12
    assert result.close[gap, 0] == 21.0
    assert result.open[gap, 0] == result.high[gap, 0] == result.low[gap, 0] == 21.0
    assert result.volume[gap, 0] == 0.0
    assert result.gap_rows == 1


def test_non_positive_prices_and_negative_volume_are_missing() -> None:
    rows = [[10, 11, 9, 10, 100]] * 24 + [[0, -1, 9.5, 10.2, -5]]
    result = run(rows)
    assert result.open[-1, 0] == 10.0
    assert result.high[-1, 0] == 10.2
    assert result.volume[-1, 0] == 0.0


def test_zero_close_is_a_gap_not_a_crash_to_zero() -> None:
    rows = [[10, 11, 9, 10, 100]] * 24 + [[10, 11, 9, 0.0, 100]] + [[10, 11, 9, 10, 100]]
    result = run(rows)
    assert result.close[24, 0] == 10.0
    assert np.all(result.close[:, 0] > 0)


def test_late_listing_is_left_aligned() -> None:
    a = [[10, 11, 9, 10, 1]] * 30
    b = [[NAN] * 5] * 8 + [[20, 21, 19, 20 + i, 1] for i in range(22)]
    data = {k: np.hstack([block(a)[k], block(b)[k]]) for k in block(a)}
    result = clean(data["open"], data["high"], data["low"], data["close"], data["volume"])
    assert list(result.lengths) == [30, 22]
    assert result.close[0, 1] == 20.0
    assert np.isnan(result.close[22:, 1]).all()
    assert list(result.last_row) == [29, 29]


def test_short_history_and_stale_symbols_fail_with_reasons() -> None:
    short = [[NAN] * 5] * 15 + [[10, 11, 9, 10, 1]] * 15
    stale = [[10, 11, 9, 10, 1]] * 22 + [[NAN] * 5] * 8
    nothing = [[NAN] * 5] * 30
    late_stop = [[10, 11, 9, 10, 1]] * 27 + [[NAN] * 5] * 3
    columns = [block(x) for x in (short, stale, nothing, late_stop)]
    data = {k: np.hstack([c[k] for c in columns]) for k in columns[0]}
    result = clean(data["open"], data["high"], data["low"], data["close"], data["volume"])
    assert result.failures[0] == "only 15 bars of history (need 20)"
    assert result.failures[1] == "stale: no bar in the last 8 sessions"
    assert result.failures[2] == "no price data in the scan window"
    assert list(result.columns) == [3]
    assert list(result.last_row) == [26]


def test_real_sample_cleans_every_partial_row() -> None:
    sample = load_sample_block()
    fields = [np.array(sample.field(n)) for n in ("open", "high", "low", "close", "volume")]
    result = clean(*fields)
    assert result.partial_rows == 384
    assert result.inconsistent_rows == 42
    for name in ("open", "high", "low", "close"):
        values = getattr(result, name)
        inside = np.arange(values.shape[0])[:, None] < result.lengths
        assert np.isfinite(values[inside]).all(), name
        assert (values[inside] > 0).all(), name
    finite = np.isfinite(result.high)
    assert (result.high >= np.fmax(result.open, result.close))[finite].all()
    assert (result.low <= np.fmin(result.open, result.close))[finite].all()


def test_inconsistent_row_is_widened_to_contain_open_and_close() -> None:
    rows = [[10, 11, 9, 10, 100]] * 24 + [[234.98, 237.96, 468.0, 481.77, 100]]
    result = run(rows)
    assert (result.high[-1, 0], result.low[-1, 0]) == (481.77, 234.98)
    assert result.inconsistent_rows == 1


@pytest.mark.parametrize("min_bars", [20, 200])
def test_min_bars_is_respected(min_bars: int) -> None:
    rows = [[10, 11, 9, 10, 1]] * 100
    result = run(rows, min_bars=min_bars)
    assert bool(result.failures) == (min_bars > 100)
