"""Whole scans through ``run_scan``: real sample, synthetic, CSV; inline and in processes."""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import talib
from technic.engine import ROW_FIELDS, InvalidConfig, ScanConfig, run_scan
from technic.engine.errors import DataError
from technic.engine.sample import load_sample_block
from technic.engine.workers import worker_pool

PLAN_FIELDS = ("entry", "stop", "target", "reward_risk", "position_size")


@pytest.fixture(scope="module")
def sample_scan():
    snapshots: list[dict] = []
    result = run_scan(ScanConfig(), on_progress=snapshots.append, progress_interval_s=0)
    return result, snapshots


def test_sample_scan_ranks_every_rateable_symbol(sample_scan) -> None:
    result, _ = sample_scan
    assert result.status == "completed"
    assert [row["rank"] for row in result.rows] == list(range(1, len(result.rows) + 1))
    ratings = [row["tech_rating"] for row in result.rows]
    assert ratings == sorted(ratings, reverse=True)
    assert all(0 <= r <= 100 for r in ratings)
    assert max(ratings) - min(ratings) > 30, "ratings should spread over the scale"
    failed = {f["symbol"]: f["reason"] for f in result.failures}
    assert failed["AMT"] == "no price data"
    assert len(result.rows) + len(failed) == 504
    assert result.metrics["symbols_scanned"] == len(result.rows)
    assert result.metrics["partial_rows_repaired"] > 0


def test_rows_carry_exactly_the_named_fields(sample_scan) -> None:
    result, _ = sample_scan
    for row in result.rows:
        assert list(row) == ["rank", *ROW_FIELDS]
        for field in PLAN_FIELDS:
            assert row[field] is not None and math.isfinite(row[field]), field
        assert row["stop"] < row["close"] < row["entry"] < row["target"]
        assert row["reward_risk"] == pytest.approx(2.0)
        assert row["signal"] in {"Strong Buy", "Buy", "Neutral", "Sell", "Strong Sell"}
    aapl = next(row for row in result.rows if row["symbol"] == "AAPL")
    assert aapl["sector"] == "Information Technology"
    assert aapl["as_of"] == "2017-08-11"
    assert aapl["close"] == 157.48


def test_scan_indicators_equal_talib_on_complete_real_data(sample_scan) -> None:
    """For symbols with complete bars in the window, every value equals TA-Lib's."""
    result, _ = sample_scan
    block = load_sample_block()
    window = slice(len(block.dates) - 504, len(block.dates))
    rows = {row["symbol"]: row for row in result.rows}
    checked = 0
    for column, symbol in enumerate(block.symbols):
        bars = {
            n: np.array(block.field(n)[window, column])
            for n in ("open", "high", "low", "close", "volume")
        }
        complete = all(np.isfinite(v).all() for v in bars.values())
        consistent = np.all(
            (bars["high"] >= np.maximum(bars["open"], bars["close"]))
            & (bars["low"] <= np.minimum(bars["open"], bars["close"]))
        )
        if symbol not in rows or not (complete and consistent):
            continue
        row, close, high, low = rows[symbol], bars["close"], bars["high"], bars["low"]
        macd, macd_signal, macd_hist = talib.MACD(close, 12, 26, 9)
        upper, middle, lower = talib.BBANDS(close, 20, 2.0, 2.0)
        expected = {
            "sma20": talib.SMA(close, 20),
            "sma50": talib.SMA(close, 50),
            "sma200": talib.SMA(close, 200),
            "ema12": talib.EMA(close, 12),
            "ema26": talib.EMA(close, 26),
            "rsi14": talib.RSI(close, 14),
            "macd": macd,
            "macd_signal": macd_signal,
            "macd_hist": macd_hist,
            "atr14": talib.ATR(high, low, close, 14),
            "adx14": talib.ADX(high, low, close, 14),
            "bb_upper": upper,
            "bb_middle": middle,
            "bb_lower": lower,
            "high_52w": talib.MAX(high, 252),
        }
        for field, series in expected.items():
            assert row[field] == pytest.approx(series[-1], rel=1e-9), (symbol, field)
        assert row["ret_21d"] == pytest.approx(close[-1] / close[-22] - 1, rel=1e-9)
        checked += 1
    assert checked > 100  # 2017-07-31 left most symbols with a partial row


def test_progress_reaches_100_in_stage_order(sample_scan) -> None:
    _, snapshots = sample_scan
    progress = [s["overall_progress"] for s in snapshots]
    assert progress == sorted(progress)
    assert progress[-1] == pytest.approx(100.0)
    assert snapshots[-1]["status"] == "completed"
    started = [s["current_stage"] for s in snapshots if s["current_stage"]]
    order = list(dict.fromkeys(started))
    assert order == ["universe_loading", "data_fetching", "symbol_scanning", "finalization"]
    scanning = [s["stages"]["symbol_scanning"]["current"] for s in snapshots]
    assert len(set(scanning)) > 5, "scanning reports per chunk"
    assert snapshots[-1]["stages"]["symbol_scanning"]["total"] == 504
    for snap in snapshots:
        weighted = sum(st["weight"] * st["progress"] for st in snap["stages"].values())
        assert snap["overall_progress"] == pytest.approx(weighted)


def test_sector_filter_and_unknown_sector_lists_the_valid_ones() -> None:
    result = run_scan(ScanConfig(sectors=("energy",), max_symbols=10))
    assert {row["sector"] for row in result.rows} == {"Energy"}
    assert len(result.rows) + len(result.failures) == 10
    with pytest.raises(InvalidConfig) as caught:
        run_scan(ScanConfig(sectors=("Crypto",)))
    assert caught.value.field == "sectors"
    assert "Information Technology" in str(caught.value)
    assert "Telecommunications Services" in str(caught.value)


def test_min_tech_rating_filters_and_symbols_select() -> None:
    result = run_scan(ScanConfig(min_tech_rating=60))
    assert result.rows and all(row["tech_rating"] >= 60 for row in result.rows)
    picked = run_scan(ScanConfig(symbols=("AAPL", "MSFT", "NOPE")))
    assert {row["symbol"] for row in picked.rows} == {"AAPL", "MSFT"}
    assert picked.failures == [{"symbol": "NOPE", "reason": "not in the universe"}]


def test_as_of_rates_an_earlier_day_and_refuses_dates_outside_the_data() -> None:
    result = run_scan(ScanConfig(symbols=("AAPL",), as_of=dt.date(2016, 1, 3)))
    assert result.rows[0]["as_of"] == "2015-12-31"
    for bad in (dt.date(2000, 1, 1), dt.date(2020, 1, 1)):
        with pytest.raises(InvalidConfig, match="as_of"):
            run_scan(ScanConfig(as_of=bad))


def test_synthetic_scan_is_deterministic_and_sized() -> None:
    config = ScanConfig(provider="synthetic", max_symbols=300, bars=300, seed=3)
    first, second = run_scan(config), run_scan(config)
    assert len(first.rows) == 300
    assert first.rows == second.rows
    other = run_scan(ScanConfig(provider="synthetic", max_symbols=300, bars=300, seed=4))
    assert other.rows != first.rows


def test_process_pool_gives_the_same_rows_as_inline() -> None:
    config = ScanConfig(provider="synthetic", max_symbols=700, bars=260)
    inline = run_scan(config)
    with worker_pool(2) as pool:
        pooled = run_scan(config, executor=pool)
    assert pooled.rows == inline.rows
    assert isinstance(pool, ProcessPoolExecutor)


def test_cache_makes_the_second_scan_skip_fetching(tmp_path: Path) -> None:
    config = ScanConfig(provider="synthetic", max_symbols=200, bars=100)
    cold = run_scan(config, cache_dir=tmp_path)
    warm = run_scan(config, cache_dir=tmp_path)
    assert (cold.metrics["cache_hit"], warm.metrics["cache_hit"]) == (False, True)
    assert (cold.metrics["cache_hit_ratio"], warm.metrics["cache_hit_ratio"]) == (0.0, 1.0)
    assert warm.rows == cold.rows
    assert len(list(tmp_path.iterdir())) == 1


def test_cancel_stops_within_a_second_and_says_cancelled() -> None:
    cancel = threading.Event()
    seen: list[dict] = []
    cancelled_at: list[float] = []

    def on_progress(snapshot: dict) -> None:
        seen.append(snapshot)
        if snapshot["stages"]["symbol_scanning"]["current"] > 0 and not cancel.is_set():
            cancel.set()
            cancelled_at.append(time.monotonic())

    config = ScanConfig(provider="synthetic", max_symbols=20_000, bars=300)
    with worker_pool(2) as pool:
        result = run_scan(config, executor=pool, cancel=cancel, on_progress=on_progress)
        stopped = time.monotonic()
    assert result.status == "cancelled"
    assert stopped - cancelled_at[0] < 1.0
    assert seen[-1]["status"] == "cancelled"
    assert seen[-1]["stages"]["symbol_scanning"]["progress"] < 100
    assert result.rows == []


def test_a_scan_without_a_cache_has_a_hit_ratio_of_zero() -> None:
    result = run_scan(ScanConfig(max_symbols=20))
    assert result.metrics["cache_hit_ratio"] == 0.0


def test_cancel_during_fetch() -> None:
    cancel = threading.Event()
    cancel.set()
    result = run_scan(ScanConfig(provider="synthetic", max_symbols=5000), cancel=cancel)
    assert result.status == "cancelled"


def write_csv(path: Path, text: str) -> None:
    path.write_text(text.strip() + "\n")


def test_csv_provider_copes_with_messy_files(tmp_path: Path) -> None:
    dates = np.busday_offset("2020-01-01", np.arange(60), roll="forward")
    good = "\n".join(
        f"{d},{10 + i / 10:.2f},{10.5 + i / 10:.2f},{9.5 + i / 10:.2f},{10.2 + i / 10},{1000 + i}"
        for i, d in enumerate(dates)
    )
    short = "\n".join(f"{d},{20 + i}" for i, d in enumerate(dates[-10:]))
    write_csv(tmp_path / "GOOD.csv", "Date,Open,High,Low,Close,Volume\n" + good)
    write_csv(tmp_path / "lower.csv", "date,open,high,low,close,volume\n" + good)
    write_csv(tmp_path / "BADCOLS.csv", "when,price\n2020-01-01,3")
    write_csv(tmp_path / "JUNK.csv", "Date,Open,High,Low,Close,Volume\nnot-a-date,x,y,z,w,v")
    write_csv(tmp_path / "STALE.csv", "Date,Close\n2020-01-01,5\n2020-01-02,6")
    write_csv(tmp_path / "SHORT.csv", "DATE,CLOSE\n" + short)
    result = run_scan(ScanConfig(provider="csv", data_dir=str(tmp_path)))
    assert {row["symbol"] for row in result.rows} == {"GOOD", "LOWER"}
    reasons = {f["symbol"]: f["reason"] for f in result.failures}
    assert reasons["BADCOLS"] == "BADCOLS.csv has no date or close column"
    assert reasons["JUNK"] == "JUNK.csv has no rows with a valid date"
    assert reasons["STALE"] == "stale: no bar in the last 58 sessions"
    assert reasons["SHORT"] == "only 10 bars of history (need 20)"


def test_csv_universe_file_with_ticker_column(tmp_path: Path) -> None:
    universe = tmp_path / "universe.csv"
    universe.write_text(
        "Ticker,NAME,Sector,SubIndustry\n"
        "aapl,Apple,Information Technology,Hw\n"
        "xom,Exxon,Energy,Oil\n"
    )
    result = run_scan(ScanConfig(universe_file=str(universe), sectors=("Energy",)))
    assert [row["symbol"] for row in result.rows] == ["XOM"]
    assert result.rows[0]["name"] == "Exxon"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (ScanConfig(provider="csv", data_dir="/no/such/dir"), "data directory not found"),
        (ScanConfig(universe_file="/no/such/file.csv"), "universe file not found"),
    ],
)
def test_missing_sources_are_clear_errors(config: ScanConfig, message: str) -> None:
    snapshots: list[dict] = []
    with pytest.raises(DataError, match=message):
        run_scan(config, on_progress=snapshots.append)
    assert snapshots[-1]["status"] == "failed"
    assert message in snapshots[-1]["error"]


def test_a_scan_beyond_max_scan_cells_is_refused_before_any_bar_is_fetched(
    tmp_path: Path,
) -> None:
    snapshots: list[dict] = []
    config = ScanConfig(provider="synthetic", max_symbols=5000, bars=10_000, lookback_bars=10_000)
    started = time.monotonic()
    with pytest.raises(InvalidConfig) as refused:
        run_scan(
            config, on_progress=snapshots.append, cache_dir=tmp_path, max_scan_cells=32_000_000
        )
    assert time.monotonic() - started < 2
    assert refused.value.field == "max_symbols"
    assert "5,000 symbols x 10,000 bars = 50,000,000 cells" in refused.value.message
    assert "MAX_SCAN_CELLS (32,000,000)" in refused.value.message
    assert snapshots[-1]["stages"]["data_fetching"]["status"] == "pending"
    assert list(tmp_path.iterdir()) == []


def test_max_scan_cells_counts_the_symbols_left_after_the_filters() -> None:
    """The sample has 1,258 bars: its 504 symbols are 634,032 cells, its 32 Energy ones
    40,256."""
    with pytest.raises(InvalidConfig, match="504 symbols x 1,258 bars = 634,032 cells"):
        run_scan(ScanConfig(), max_scan_cells=100_000)
    energy = run_scan(ScanConfig(sectors=("Energy",)), max_scan_cells=100_000)
    assert energy.status == "completed"


def test_csv_files_beyond_max_scan_cells_are_refused_once_their_dates_are_known(
    tmp_path: Path,
) -> None:
    dates = np.busday_offset("2020-01-01", np.arange(60), roll="forward")
    for symbol in ("AAA", "BBB", "CCC"):
        rows = "\n".join(f"{d},{10 + i},{11 + i},{9 + i},{10 + i},100" for i, d in enumerate(dates))
        write_csv(tmp_path / f"{symbol}.csv", "Date,Open,High,Low,Close,Volume\n" + rows)
    config = ScanConfig(provider="csv", data_dir=str(tmp_path))
    with pytest.raises(InvalidConfig, match="3 symbols x 60 bars = 180 cells"):
        run_scan(config, max_scan_cells=179)
    assert len(run_scan(config, max_scan_cells=180).rows) == 3


def test_scans_keep_the_cache_within_cache_max_bytes(tmp_path: Path) -> None:
    def cache_bytes() -> int:
        return sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())

    first = ScanConfig(provider="synthetic", max_symbols=300, bars=200, seed=1)
    run_scan(first, cache_dir=tmp_path)
    one_entry = cache_bytes()
    bound = int(1.5 * one_entry)
    for seed in (2, 3, 4):
        config = ScanConfig(provider="synthetic", max_symbols=300, bars=200, seed=seed)
        assert run_scan(config, cache_dir=tmp_path, cache_max_bytes=bound).status == "completed"
        assert cache_bytes() <= bound
    again = run_scan(config, cache_dir=tmp_path, cache_max_bytes=bound)
    assert again.metrics["cache_hit"] is True


def test_a_stage_working_without_counting_units_still_sends_progress(tmp_path: Path) -> None:
    """Writing a big fetched block counts no unit for a second or more: the heartbeat keeps
    snapshots (elapsed time, ETA, time_progress) going out meanwhile."""
    snapshots: list[dict] = []
    config = ScanConfig(provider="synthetic", max_symbols=40_000, bars=300)
    run_scan(config, on_progress=snapshots.append, cache_dir=tmp_path, progress_interval_s=0.05)
    fetching = [s for s in snapshots if s["current_stage"] == "data_fetching"]
    done = [s for s in fetching if s["stages"]["data_fetching"]["current"] == 40_000]
    assert len(done) >= 2, "the block's writing sent no progress after the last symbol"
    assert done[-1]["elapsed_seconds"] > done[0]["elapsed_seconds"]
