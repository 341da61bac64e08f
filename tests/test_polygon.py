"""The polygon provider against a local stand-in of the Massive (Polygon.io) API.

Everything a user would check: the ratings equal ``--provider sample`` on the same bars,
what a scan costs in requests (none the second time), failure rows that say why, the
fetch stage's ETA at its start against the time it then took, cancelling while the rate
limiter holds a request back, and the key in no log line, message or file.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import math
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from technic.cli.terminal_view import render
from technic.engine.errors import ProviderAccessDenied
from technic.engine.polygon.calendar import NEW_YORK, is_session, sessions_ending
from technic.engine.polygon.client import PolygonClient
from technic.engine.polygon.plan import plan_requests
from technic.engine.polygon.source import PolygonSource
from technic.engine.progress import MultiStageProgressTracker
from technic.engine.sample import load_sample_block
from technic.engine.scan import ScanResult, run_scan
from technic.engine.scan_config import ScanConfig

from tests.polygon_standin import StandIn, assert_same_ratings

KEY = "pk_TEST_3fQ9xLr7Wm2Zt8Vb"
AS_OF = dt.date(2017, 8, 11)
FAST = 60_000  # requests per minute: the stand-in, not the limiter, sets the pace


@pytest.fixture
def standin() -> Any:
    with StandIn(KEY) as server:
        yield server


def make_source(
    standin: StandIn,
    data_dir: Path | None,
    *,
    rate: float = FAST,
    key: str = KEY,
    now: dt.datetime | None = None,
    **client: Any,
) -> PolygonSource:
    client.setdefault("backoff_s", 0.01)
    polygon = PolygonClient(key, standin.url, rate, **client)
    store = data_dir / "bars" if data_dir is not None else None
    if now is None:
        return PolygonSource(polygon, store)
    return PolygonSource(polygon, store, now=lambda: now)


def polygon_scan(source: PolygonSource, data_dir: Path | None, **config: Any) -> ScanResult:
    config.setdefault("as_of", AS_OF)
    config.setdefault("max_symbols", 50)
    cache = data_dir / "cache" if data_dir is not None else None
    progress = config.pop("on_progress", None)
    cancel = config.pop("cancel", None)
    return run_scan(
        ScanConfig(provider="polygon", **config),
        polygon=source,
        cache_dir=cache,
        on_progress=progress,
        cancel=cancel,
        progress_interval_s=0,
    )


@functools.cache
def sample_rows(as_of: dt.date, max_symbols: int, lookback: int = 504) -> list[dict[str, Any]]:
    config = ScanConfig(as_of=as_of, max_symbols=max_symbols, lookback_bars=lookback)
    return run_scan(config).rows


def failure_reasons(result: ScanResult) -> dict[str, str]:
    return {f["symbol"]: f["reason"] for f in result.failures}


# -- ratings and requests ------------------------------------------------------------------


def test_a_50_symbol_scan_goes_per_symbol_and_rates_like_the_sample(
    standin: StandIn, tmp_path: Path
) -> None:
    result = polygon_scan(make_source(standin, tmp_path), tmp_path)
    requests = standin.bar_requests()
    assert len(requests) == 50
    assert not any(r.is_grouped for r in requests)
    complete = standin.complete_symbols(AS_OF, 504)
    assert len(complete & {r["symbol"] for r in result.rows}) >= 10
    assert_same_ratings(result.rows, sample_rows(AS_OF, 50), complete)
    assert failure_reasons(result)["AMT"] == (
        "no bars from the provider between 2015-08-13 and 2017-08-11"
    )


def test_the_bars_are_the_samples_bars_wherever_the_api_has_them(
    standin: StandIn, tmp_path: Path
) -> None:
    """Every bar the stand-in serves reaches the block unchanged (floats exactly)."""
    from technic.engine.providers import QUIET, provider_for

    provider = provider_for(
        ScanConfig(provider="polygon", as_of=AS_OF, lookback_bars=60),
        polygon=make_source(standin, tmp_path),
    )
    symbols = np.array(["AAPL", "MSFT", "GOOGL", "BRK.B", "AMT"], dtype=object)
    block = provider.fetch(symbols, QUIET).block
    sample = load_sample_block()
    rows = np.searchsorted(sample.dates, block.dates)
    assert (sample.dates[rows] == block.dates).all()
    columns = [list(sample.symbols).index(s) for s in symbols[:4]]
    for name in ("open", "high", "low", "close", "volume"):
        served = block.field(name)[:, :4]
        expected = sample.field(name)[rows][:, columns]
        both = np.isfinite(served)
        assert both.sum() > 200
        assert np.array_equal(served[both], expected[both])
    assert np.isnan(block.close[:, 4]).all()


def test_a_second_identical_scan_makes_no_bar_request(standin: StandIn, tmp_path: Path) -> None:
    source = make_source(standin, tmp_path)
    first = polygon_scan(source, tmp_path)
    standin.reset_log()
    again = polygon_scan(source, tmp_path)
    assert standin.bar_requests() == []
    assert again.rows == first.rows
    # not only the block cache: a different selection is built from the bar store alone
    fewer = polygon_scan(source, tmp_path, max_symbols=20, min_tech_rating=1)
    assert standin.bar_requests() == []
    assert_same_ratings(fewer.rows, first.rows, {r["symbol"] for r in fewer.rows})
    # the first scan fetched everything, the second hit the block cache, the third was
    # served from the bar store alone
    ratios = [scan.metrics["cache_hit_ratio"] for scan in (first, again, fewer)]
    assert ratios == [0.0, 1.0, 1.0]


def test_the_hit_ratio_is_the_share_of_symbol_sessions_the_bar_store_served(
    standin: StandIn, tmp_path: Path
) -> None:
    source = make_source(standin, tmp_path)
    day_before = dt.date(2017, 8, 10)
    polygon_scan(source, tmp_path, max_symbols=20, lookback_bars=100, as_of=day_before)
    wider = polygon_scan(source, tmp_path, max_symbols=50, lookback_bars=100, as_of=day_before)
    assert wider.metrics["cache_hit_ratio"] == pytest.approx(20 / 50)
    next_day = polygon_scan(source, tmp_path, max_symbols=50, lookback_bars=100)
    assert next_day.metrics["cache_hit_ratio"] == pytest.approx(99 / 100)


def test_the_next_days_scan_makes_one_grouped_request_and_one_split_check(
    standin: StandIn, tmp_path: Path
) -> None:
    source = make_source(standin, tmp_path)
    polygon_scan(source, tmp_path, as_of=dt.date(2017, 8, 10))
    standin.reset_log()
    result = polygon_scan(source, tmp_path, as_of=AS_OF)
    assert sorted(r.path.rsplit("/", 1)[1] for r in standin.bar_requests()) == [
        "2017-08-10",  # fetched again: a stored bar that changed would mean a split
        "2017-08-11",
    ]
    assert all(r.is_grouped for r in standin.bar_requests())
    assert_same_ratings(result.rows, sample_rows(AS_OF, 50), standin.complete_symbols(AS_OF, 504))


def test_a_500_symbol_scan_goes_per_day_and_learns_unscheduled_closures(
    standin: StandIn, tmp_path: Path
) -> None:
    """The window of this scan holds the two days of Hurricane Sandy (2012-10-29/30): the
    calendar does not know them, the stand-in answers them without results."""
    as_of, lookback = dt.date(2013, 3, 15), 120
    source = make_source(standin, tmp_path)
    result = polygon_scan(source, tmp_path, as_of=as_of, max_symbols=504, lookback_bars=lookback)
    requests = standin.bar_requests()
    assert all(r.is_grouped for r in requests)
    days = [r.path.rsplit("/", 1)[1] for r in requests]
    assert "2012-10-29" in days and "2012-10-30" in days
    assert len(requests) == lookback + 2 + 1  # the window, two closures, one split check
    assert not [f for f in result.failures if f["symbol"][:1].isdigit()]
    complete = standin.complete_symbols(as_of, lookback)
    assert len(complete) > 300
    assert_same_ratings(result.rows, sample_rows(as_of, 504, lookback), complete)
    # the closures are remembered with the bars: built again from the store alone
    shutil.rmtree(tmp_path / "cache")
    standin.reset_log()
    polygon_scan(source, tmp_path, as_of=as_of, max_symbols=504, lookback_bars=lookback)
    assert standin.bar_requests() == []


def test_a_split_is_detected_and_that_symbols_history_fetched_again(
    standin: StandIn, tmp_path: Path
) -> None:
    source = make_source(standin, tmp_path)
    polygon_scan(source, tmp_path, as_of=dt.date(2017, 8, 10))
    standin.splits["AAPL"] = (AS_OF, 2.0)
    standin.reset_log()
    stored = polygon_scan(source, tmp_path)
    paths = sorted(r.path for r in standin.bar_requests())
    assert len(paths) == 3
    assert paths[-1].startswith("/v2/aggs/ticker/AAPL/range/1/day/")
    fresh = polygon_scan(make_source(standin, None), None)
    assert stored.rows == fresh.rows
    aapl = next(r for r in stored.rows if r["symbol"] == "AAPL")
    before = next(r for r in sample_rows(AS_OF, 50) if r["symbol"] == "AAPL")
    assert math.isclose(aapl["sma50"], before["sma50"] / 2, rel_tol=0.05)


# -- rate limits and errors ----------------------------------------------------------------


def test_429_on_every_fifth_request_costs_no_symbol(standin: StandIn, tmp_path: Path) -> None:
    standin.faults.every_nth_429 = 5
    result = polygon_scan(make_source(standin, tmp_path), tmp_path)
    assert sum(r.status == 429 for r in standin.bar_requests()) >= 10
    assert failure_reasons(result).keys() == {"AMT"}
    assert_same_ratings(result.rows, sample_rows(AS_OF, 50), standin.complete_symbols(AS_OF, 504))


def test_retry_after_holds_every_request_back(standin: StandIn, tmp_path: Path) -> None:
    standin.faults.every_nth_429 = 4
    standin.faults.retry_after_s = 1
    result = polygon_scan(make_source(standin, tmp_path), tmp_path, max_symbols=6)
    log = standin.bar_requests()
    limited = [r.at for r in log if r.status == 429]
    assert limited
    for at in limited:
        # requests already on their way when the 429 came may arrive; no new one starts
        gaps = [r.at - at for r in log if r.at > at]
        assert all(gap < 0.1 or gap >= 0.95 for gap in gaps), gaps
    assert len(result.rows) == 6


def test_server_errors_are_retried_then_the_symbol_is_a_failure_row(
    standin: StandIn, tmp_path: Path
) -> None:
    standin.faults.server_errors.update({"ADBE": -1, "AAPL": 2})
    result = polygon_scan(make_source(standin, tmp_path), tmp_path)
    reasons = failure_reasons(result)
    assert reasons["ADBE"] == "the provider did not answer: HTTP 500 after 4 attempts"
    assert reasons.keys() == {"ADBE", "AMT"}
    adbe = [r for r in standin.bar_requests() if "/ticker/ADBE/" in r.path]
    assert [r.status for r in adbe] == [500] * 4
    # a failed symbol is asked again by the next scan, not remembered as having no bars
    standin.faults.server_errors.clear()
    standin.reset_log()
    again = polygon_scan(make_source(standin, tmp_path), tmp_path, symbols=("ADBE",))
    assert [r.path.split("/")[4] for r in standin.bar_requests()] == ["ADBE"]
    assert [r["symbol"] for r in again.rows] == ["ADBE"]


def test_a_grouped_day_that_keeps_failing_is_a_failure_row_named_by_its_date(
    standin: StandIn, tmp_path: Path
) -> None:
    standin.faults.server_errors["2017-08-09"] = -1
    result = polygon_scan(
        make_source(standin, tmp_path), tmp_path, max_symbols=504, lookback_bars=30
    )
    reasons = failure_reasons(result)
    assert reasons["2017-08-09"] == (
        "bars of every symbol for 2017-08-09: HTTP 500 after 4 attempts"
    )
    assert sum(r.path.endswith("/2017-08-09") for r in standin.bar_requests()) == 4
    assert len(result.rows) > 450
    assert {row["as_of"] for row in result.rows} == {"2017-08-11"}


def test_a_wrong_key_fails_the_scan_at_once_naming_the_setting(
    standin: StandIn, tmp_path: Path
) -> None:
    wrong = "pk_WRONG_0000000000"
    snapshots: list[dict[str, Any]] = []
    source = make_source(standin, tmp_path, key=wrong)
    started = time.monotonic()
    with pytest.raises(ProviderAccessDenied) as refused:
        polygon_scan(source, tmp_path, on_progress=snapshots.append)
    assert time.monotonic() - started < 5
    message = str(refused.value)
    assert "POLYGON_API_KEY" in message and "HTTP 401: Unknown API Key" in message
    assert wrong not in message and wrong not in json.dumps(snapshots)
    assert snapshots[-1]["status"] == "failed"
    assert len(standin.bar_requests()) <= source.client.workers


def test_no_key_fails_before_anything_is_fetched(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="POLYGON_API_KEY is not set"):
        run_scan(ScanConfig(provider="polygon", max_symbols=5), cache_dir=tmp_path)


def test_cancel_takes_effect_while_the_rate_limiter_holds_requests(
    standin: StandIn, tmp_path: Path
) -> None:
    source = make_source(standin, tmp_path, rate=2)  # one request every 30 s
    cancel = threading.Event()
    outcome: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: outcome.update(
            result=polygon_scan(source, tmp_path, max_symbols=5, cancel=cancel)
        )
    )
    worker.start()
    deadline = time.monotonic() + 30
    while not standin.bar_requests() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    cancelled_at = time.monotonic()
    cancel.set()
    worker.join(5)
    assert not worker.is_alive()
    assert time.monotonic() - cancelled_at < 1.0
    assert outcome["result"].status == "cancelled"
    assert len(standin.bar_requests()) == 1
    # the one symbol fetched is kept: the next scan does not ask for it again
    standin.reset_log()
    polygon_scan(make_source(standin, tmp_path), tmp_path, max_symbols=5)
    assert len(standin.bar_requests()) == 4


def test_concurrent_scans_share_the_rate_limit_and_the_store(
    standin: StandIn, tmp_path: Path
) -> None:
    """Two scans of one process (the server runs several) pace their requests together
    (the provider limits the key, not the scan), and write the same store safely."""
    source = make_source(standin, tmp_path, rate=600)  # one request every 0.1 s
    results: dict[str, ScanResult] = {}

    def scan(name: str, symbols: tuple[str, ...]) -> None:
        results[name] = polygon_scan(source, tmp_path, symbols=symbols)

    first = ("AAPL", "MSFT", "XOM", "JPM", "GE", "T", "KO", "PFE")
    second = ("AMZN", "GOOGL", "WMT", "CVX", "INTC", "CSCO", "MRK", "BA")
    threads = [
        threading.Thread(target=scan, args=("first", first)),
        threading.Thread(target=scan, args=("second", second)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    arrivals = sorted(r.at for r in standin.bar_requests())
    assert len(arrivals) == 16
    # never faster than the limit, whichever scan sent them (arrivals may bunch a little)
    assert arrivals[-1] - arrivals[0] >= 0.9 * 15 * 0.1
    assert {r["symbol"] for r in results["first"].rows} == set(first)
    assert {r["symbol"] for r in results["second"].rows} == set(second)
    standin.reset_log()
    both = polygon_scan(make_source(standin, tmp_path), tmp_path, symbols=first + second)
    assert standin.bar_requests() == []
    assert len(both.rows) == 16


# -- progress --------------------------------------------------------------------------------


def test_the_fetch_stage_eta_at_its_start_is_the_time_it_takes(
    standin: StandIn, tmp_path: Path
) -> None:
    snapshots: list[dict[str, Any]] = []
    source = make_source(standin, tmp_path, rate=240)  # one request every 0.25 s
    polygon_scan(source, tmp_path, max_symbols=12, on_progress=snapshots.append)
    fetching = [s for s in snapshots if s["current_stage"] == "data_fetching"]
    planned = next(s for s in fetching if "(12 requests)" in s["message"])
    assert planned["stages"]["data_fetching"]["current"] == 0
    eta = planned["stage_eta"]
    took = snapshots[-1]["stages"]["data_fetching"]["duration"]
    assert eta == pytest.approx(12 * 0.25, rel=0.05)
    assert abs(eta - took) <= 0.25 * took, (eta, took)
    assert "12 symbols (12 requests)" in planned["message"]
    assert planned["stages"]["data_fetching"]["unit"] == "requests"
    assert "0/12 requests" in "\n".join(render(planned))


def test_a_free_plan_fetch_of_504_days_says_1h_41m_from_its_first_second() -> None:
    """At 5 requests a minute (one every 12 s) 504 grouped days take 100.6 minutes."""
    now = [0.0]
    tracker = MultiStageProgressTracker(clock=lambda: now[0], wall_clock=lambda: 0.0)
    tracker.start_stage("data_fetching", total=504)
    tracker.set_pace("data_fetching", 12.0)
    now[0] = 1.0
    assert tracker.snapshot()["stage_eta_formatted"] == "1h 41m"
    tracker.update("data_fetching", 1)  # the first request answers at once...
    now[0] = 1.2
    assert tracker.snapshot()["stage_eta"] == pytest.approx(503 * 12 - 0.2, abs=0.5)
    now[0] = 12 * 50
    tracker.update("data_fetching", 51)
    assert tracker.snapshot()["stage_eta"] == pytest.approx(453 * 12, rel=0.01)


# -- the calendar and what is final --------------------------------------------------------


def test_the_calendar_has_the_samples_sessions_but_sandy() -> None:
    dates = [d.astype(dt.date) for d in load_sample_block().dates]
    day, sessions = dates[0], []
    while day <= dates[-1]:
        if is_session(day):
            sessions.append(day)
        day += dt.timedelta(days=1)
    assert sorted(set(sessions) - set(dates)) == [dt.date(2012, 10, 29), dt.date(2012, 10, 30)]
    assert set(dates) <= set(sessions)
    assert sessions_ending(AS_OF, 504)[0] == dates[-504]


def test_todays_bar_is_not_fetched_before_it_is_final(standin: StandIn, tmp_path: Path) -> None:
    during = dt.datetime(2017, 8, 11, 15, 0, tzinfo=NEW_YORK)
    result = polygon_scan(
        make_source(standin, tmp_path, now=during), tmp_path, as_of=None, max_symbols=5
    )
    assert all(r.path.endswith("/2017-08-10") for r in standin.bar_requests())
    assert {row["as_of"] for row in result.rows} == {"2017-08-10"}
    standin.reset_log()
    after = dt.datetime(2017, 8, 11, 20, 30, tzinfo=NEW_YORK)
    result = polygon_scan(
        make_source(standin, tmp_path, now=after), tmp_path, as_of=None, max_symbols=5
    )
    assert sorted(r.path.rsplit("/", 1)[1] for r in standin.bar_requests()) == [
        "2017-08-10",
        "2017-08-11",
    ]
    assert {row["as_of"] for row in result.rows} == {"2017-08-11"}


def test_pages_are_followed_by_next_url_which_never_carries_the_key(tmp_path: Path) -> None:
    with StandIn(KEY, page_size=200) as standin:
        snapshots: list[dict[str, Any]] = []
        source = make_source(standin, tmp_path)
        result = polygon_scan(source, tmp_path, max_symbols=10, on_progress=snapshots.append)
        requests = standin.bar_requests()
        assert len(requests) == 10 * 3  # 514 bars each, in pages of 200
        assert all("apiKey" not in r.query and KEY not in str(r.query) for r in requests)
        fetching = snapshots[-1]["stages"]["data_fetching"]
        assert fetching["current"] == fetching["total"] == 30
        sample = sample_rows(AS_OF, 10)
        assert_same_ratings(result.rows, sample, standin.complete_symbols(AS_OF, 504))


# -- the market universe ---------------------------------------------------------------------


def test_the_market_universe_lists_stocks_with_sic_sectors_once_a_day(tmp_path: Path) -> None:
    with StandIn(KEY, list_page_size=100) as standin:
        source = make_source(standin, tmp_path)
        result = polygon_scan(source, tmp_path, universe="market", max_symbols=20)
        reference = [r for r in standin.log if r.path.startswith("/v3/")]
        assert sum(r.path == "/v3/reference/tickers" for r in reference) == 6
        assert len(reference) == 6 + 20
        sectors = {row["symbol"]: row["sector"] for row in result.rows}
        assert sectors["AAPL"] == "Services"  # SIC 7372, from "Information Technology"
        assert {row["industry"] for row in result.rows} >= {"Services-Prepackaged Software"}
        standin.reset_log()
        polygon_scan(source, tmp_path, universe="market", max_symbols=20)
        assert standin.log == []
        picked = polygon_scan(
            source, tmp_path, universe="market", max_symbols=30, sectors=("Mining",)
        )
        details = [r for r in standin.log if r.path.startswith("/v3/reference/tickers/")]
        assert len(details) == 504 - 20
        assert picked.rows and {row["sector"] for row in picked.rows} == {"Mining"}


# -- the plan ---------------------------------------------------------------------------------


def _plan(symbols: int, sessions: int, known_until: int | None = None) -> Any:
    days = sessions_ending(AS_OF, sessions)
    known = np.zeros((symbols, sessions), dtype=bool)
    if known_until is not None:
        known[:, :known_until] = True
    names = np.array([f"S{i}" for i in range(symbols)], dtype=object)
    return plan_requests(known, names, days)


def test_the_plan_costs_the_fewest_requests() -> None:
    assert (_plan(50, 504).requests, len(_plan(50, 504).symbols)) == (50, 50)
    assert (_plan(500, 504).requests, len(_plan(500, 504).days)) == (504, 504)
    assert _plan(500, 504).check_day is None
    next_day = _plan(50, 504, known_until=503)
    assert next_day.days == (dt.date(2017, 8, 10), AS_OF)
    assert next_day.check_day == dt.date(2017, 8, 10)
    assert _plan(50, 504, known_until=504).requests == 0
    # a stored universe plus three new symbols: three per-symbol requests, nothing else
    days = sessions_ending(AS_OF, 504)
    known = np.ones((400, 504), dtype=bool)
    known[:3] = False
    mixed = plan_requests(known, np.array([f"S{i}" for i in range(400)], object), days)
    assert mixed.symbols == ("S0", "S1", "S2") and mixed.days == ()


# -- the key ----------------------------------------------------------------------------------


def test_the_key_is_in_no_log_line_message_snapshot_or_file(
    standin: StandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    standin.faults.every_nth_429 = 3
    standin.faults.server_errors.update({"ADBE": -1, "2017-08-09": 1})
    snapshots: list[dict[str, Any]] = []
    source = make_source(standin, tmp_path)
    result = polygon_scan(source, tmp_path, on_progress=snapshots.append)
    polygon_scan(source, tmp_path, max_symbols=504, lookback_bars=30, on_progress=snapshots.append)
    with pytest.raises(ProviderAccessDenied) as refused:
        polygon_scan(make_source(standin, tmp_path / "b", key=KEY + "x"), tmp_path / "b")
    texts = [
        caplog.text,
        json.dumps(snapshots),
        json.dumps(result.to_dict(), default=str),
        str(refused.value),
        repr(source),
        repr(source.client),
    ]
    assert "429" in caplog.text or "500" in caplog.text
    for text in texts:
        assert KEY not in text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 50
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path


# -- settings ---------------------------------------------------------------------------------


def test_polygon_settings_defaults_aliases_and_errors() -> None:
    from technic.config import Settings, SettingsError

    default = Settings.from_env({})
    assert (default.polygon_api_key, default.polygon_base_url, default.polygon_rate_limit) == (
        None,
        "https://api.massive.com",
        5,
    )
    massive = Settings.from_env({"MASSIVE_API_KEY": KEY, "POLYGON_BASE_URL": "http://h:1/"})
    assert massive.polygon_api_key == KEY and massive.polygon_base_url == "http://h:1"
    assert KEY not in repr(massive)
    for name, value in (("POLYGON_RATE_LIMIT", "0"), ("POLYGON_RATE_LIMIT", "fast"),
                        ("POLYGON_BASE_URL", "api.massive.com")):  # fmt: skip
        with pytest.raises(SettingsError) as bad:
            Settings.from_env({name: value})
        assert bad.value.name == name
