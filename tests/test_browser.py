"""The page in a real browser: Debian's ``chromium`` driven headless by Playwright.

A real ``technic serve`` runs as a subprocess on a free port against a fresh database (on
``TECHNIC_TEST_DATABASE_URL``'s server or the embedded one, see ``conftest.py``), and the
tests use the page the way a person does: the form, the live view, the results, the CSV,
Cancel, a reload, the history. Any console error or uncaught exception fails the test,
except the network errors a test provokes on purpose (a 400 from a bad form, a server that
was stopped). Screenshots of every view land in ``tests/output/screenshots/``.

The browser is the system's (``apt-get install chromium``; ``.ci/run`` installs it); the
module is skipped, saying why, only where Playwright or Chromium cannot be found.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from technic.storage import connect_url

from tests.live_server import OUTPUT, Server, running_scans, running_server, wait_until
from tests.test_stage_trend import ONSET, seed_history

pytestmark = pytest.mark.browser

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
)

CHROMIUM = os.environ.get("TECHNIC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = OUTPUT / "screenshots"
STAGES = ["universe_loading", "data_fetching", "symbol_scanning", "finalization"]
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
TIMEOUT_MS = 30_000

# Records, from the first moment of every document, what the page showed: the overall bar's
# values, each stage's status changes (with every stage's status at that moment) and the
# connection pill. The tests read window.__seen.
RECORDER = """
(() => {
  const seen = { overall: [], stages: [], connection: [] };
  window.__seen = seen;
  const stagesNow = () => Object.fromEntries(
    [...document.querySelectorAll("li[data-stage]")].map((li) => [li.dataset.stage,
                                                                   li.dataset.status]));
  new MutationObserver((mutations) => {
    for (const m of mutations) {
      const el = m.target;
      const isOverall = el.getAttribute?.("aria-label") === "Overall progress";
      if (m.attributeName === "aria-valuenow" && isOverall) {
        seen.overall.push(Number(el.getAttribute("aria-valuenow")));
      } else if (m.attributeName === "data-status" && el.matches("li[data-stage]")) {
        seen.stages.push({ stage: el.dataset.stage, status: el.dataset.status, all: stagesNow() });
      }
    }
    const pill = document.getElementById("connection");
    if (pill && !pill.hidden && seen.connection.at(-1) !== pill.textContent) {
      seen.connection.push(pill.textContent);
    }
  }).observe(document, {
    subtree: true, attributes: true, childList: true, characterData: true,
    attributeFilter: ["aria-valuenow", "data-status", "hidden", "data-state"],
  });
})();
"""

# Stands in for a proxy that refuses WebSocket upgrades (and, for polling, event streams too).
BLOCK_WEBSOCKET = """
window.WebSocket = class {
  constructor() {
    setTimeout(() => { this.onerror?.(new Event("error")); this.onclose?.({ code: 1006 }); }, 20);
  }
  close() {}
};
"""
BLOCK_EVENTSOURCE = """
window.EventSource = class {
  constructor() { setTimeout(() => this.onerror?.(new Event("error")), 20); }
  close() {}
};
"""


@pytest.fixture(scope="module")
def server(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("technic-data")
    with running_server(pg_server_url, data_dir, "browser-server.log") as service:
        yield service


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: apt-get install chromium (or set TECHNIC_CHROMIUM)"
        )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield instance
        finally:
            instance.close()


class Console:
    """Console errors and uncaught exceptions of a page; ``allow`` what a test provokes."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: list[re.Pattern[str]] = []

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def record(self, text: str) -> None:
        if not any(pattern.search(text) for pattern in self.allowed):
            self.errors.append(text)


@pytest.fixture
def console() -> Console:
    return Console()


def check_local(url: str, console: Console) -> None:
    """The page loads nothing from other hosts: no CDN, no fonts, no analytics."""
    if not url.startswith(("http://127.0.0.1:", "data:", "blob:")):
        console.record(f"request to another host: {url}")


@contextmanager
def new_tab(browser: Any, console: Console) -> Iterator[Any]:
    """A page in a context of its own (fresh storage), its errors going to ``console``."""
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(RECORDER)
    tab = context.new_page()
    tab.on(
        "console",
        lambda m: console.record(f"console.{m.type}: {m.text}") if m.type == "error" else None,
    )
    tab.on("pageerror", lambda error: console.record(f"uncaught: {error}"))
    tab.on("request", lambda request: check_local(request.url, console))
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture
def page(browser: Any, console: Console, request: pytest.FixtureRequest) -> Iterator[Any]:
    failed_before = request.session.testsfailed
    with new_tab(browser, console) as tab:
        yield tab
        if request.session.testsfailed > failed_before:  # what the page showed when it failed
            shot(tab, f"FAILED-{request.node.name}")
    assert console.errors == [], "the page logged errors"


def shot(page: Any, name: str, *, full_page: bool = False) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def seen(page: Any) -> dict[str, Any]:
    return page.evaluate("window.__seen")


def overall(page: Any) -> float:
    return float(page.get_attribute('[aria-label="Overall progress"]', "aria-valuenow"))


def wait_overall_above(page: Any, value: float) -> None:
    page.wait_for_function(
        "v => document.querySelector('[aria-label=\"Overall progress\"]')"
        ".getAttribute('aria-valuenow') > v",
        arg=value,
    )


def wait_for_status(page: Any, status: str, timeout_ms: int = TIMEOUT_MS) -> None:
    page.wait_for_function(
        "s => document.querySelector('.scan-head .badge')?.textContent === s",
        arg=status,
        timeout=timeout_ms,
    )


def record_snapshots(page: Any) -> list[dict[str, Any]]:
    """The progress snapshots the page receives (WebSocket frames and GET /scan/progress),
    in order: what the bars must show."""
    received: list[dict[str, Any]] = []

    def on_frame(payload: str | bytes) -> None:
        message = json.loads(payload)
        if isinstance(message, dict) and "time_progress" in message:
            received.append(message)

    def on_response(response: Any) -> None:
        if "/scan/progress/" in response.url and response.ok:
            received.append(response.json())

    page.on("websocket", lambda socket: socket.on("framereceived", on_frame))
    page.on("response", on_response)
    return received


def assert_bar_follows_time_progress(page: Any, received: list[dict[str, Any]]) -> None:
    """Every value the main bar showed is a received snapshot's time_progress (to 0.1), and
    the weighted sum of the last one is written beside it."""
    assert received, "the page received no snapshot"
    timed = [snapshot["time_progress"] for snapshot in received]
    shown = seen(page)["overall"]
    assert shown, "the bar never moved"
    for value in shown:  # aria-valuenow is rounded to a tenth
        assert min(abs(value - t) for t in timed) <= 0.051, (value, timed)
    last = received[-1]
    assert overall(page) == pytest.approx(last["time_progress"], abs=0.051)
    bar = page.locator('[aria-label="Overall progress"]')
    assert "of the expected time" in bar.get_attribute("aria-valuetext")
    page.wait_for_function(  # the fill's width, once its short transition has run
        "share => { const bar = document.querySelector('[aria-label=\"Overall progress\"]');"
        " const width = bar.querySelector('.fill').getBoundingClientRect().width;"
        " return Math.abs(width / bar.getBoundingClientRect().width - share) < 0.01; }",
        arg=last["time_progress"] / 100,
    )
    weighted = page.locator("#weighted-progress")
    assert weighted.is_visible()
    assert weighted.text_content() == f"stages {last['overall_progress']:.1f}% (weighted)"


def sort_by(page: Any, key: str) -> None:
    """Click a results heading; sorting more rows than the page holds asks the server."""
    page.click(f"#results-table thead th[data-key='{key}'] button")
    page.wait_for_selector("#results-table:not([aria-busy])")


def open_scan(page: Any, server: Server, scan_id: str, query: str = "") -> None:
    page.goto(f"{server.url}/{query}#/scan/{scan_id}")
    page.wait_for_selector(f'.scan[data-scan="{scan_id}"]')


def assert_stages_done_in_order(records: list[dict[str, Any]]) -> None:
    done = [r for r in records if r["status"] == "completed"]
    assert [r["stage"] for r in done] == STAGES, records
    for record in done:  # when a stage turned done, every earlier one already was
        index = STAGES.index(record["stage"])
        assert all(record["all"][s] == "completed" for s in STAGES[:index]), record


# -- the tests ---------------------------------------------------------------------------------


def test_start_a_scan_from_the_form_and_watch_it_to_the_results(
    page: Any, server: Server, tmp_path: Path
) -> None:
    page.goto(server.url + "/")
    page.wait_for_selector("#sector-list input[value='Telecommunications Services']")
    shot(page, "home")

    page.select_option("#field-provider", "synthetic")
    page.wait_for_selector("#sector-list input[value='Communication Services']")
    page.fill("#field-max_symbols", "6000")
    page.fill("#field-min_tech_rating", "55")
    received = record_snapshots(page)
    page.click("#start-form button[type=submit]")
    page.wait_for_url(re.compile(rf".*#/scan/{UUID}$"))
    scan_id = page.url.rsplit("/", 1)[1]

    # what the page showed along the way is in window.__seen (states can be brief)
    wait_for_status(page, "Completed")
    assert overall(page) == 100
    bar = page.locator('[aria-label="Overall progress"]')
    assert bar.get_attribute("role") == "progressbar"
    record = seen(page)
    values = record["overall"]
    assert values == sorted(values), "the overall bar went backwards"
    assert values[-1] == 100
    assert any(0 < v < 100 for v in values), "no intermediate progress was shown"
    # the main bar is the share of the expected time, the weighted sum is beside it
    assert_bar_follows_time_progress(page, received)
    assert server.api("GET", f"/scan/progress/{scan_id}")["time_progress"] == 100
    assert any(abs(s["time_progress"] - s["overall_progress"]) >= 1 for s in received), (
        "no snapshot where the two bars differ: the test shows nothing"
    )
    assert_stages_done_in_order(record["stages"])
    assert any(r["status"] == "running" for r in record["stages"]), "no stage seen running"
    assert record["connection"][-2:] == ["Live · WebSocket", "Finished"], record["connection"]
    for name in ("universe_loading", "data_fetching", "symbol_scanning"):
        units = page.locator(f'li[data-stage="{name}"] .stage-units').text_content()
        assert units == "6,000/6,000 symbols", units

    # results: sortable, coloured signals, the trade plan, the timing chart, the CSV
    table = page.locator("#results-table")
    table.wait_for()
    ratings = [
        float(t)
        for t in page.locator("#results-table tbody tr td:nth-child(4)").all_text_contents()
    ]
    assert ratings and ratings == sorted(ratings, reverse=True)
    assert min(ratings) >= 55
    assert (
        page.locator("#results-table .signal")
        .first.get_attribute("class")
        .startswith("signal signal-")
    )
    for heading in ("Entry", "Stop", "Target", "Shares"):
        assert page.locator("#results-table thead th", has_text=heading).count() == 1
    sort_by(page, "symbol")
    assert (
        page.get_attribute("#results-table thead th[data-key='symbol']", "aria-sort") == "ascending"
    )
    symbols = page.locator("#results-table tbody tr td:nth-child(2) strong").all_text_contents()
    assert symbols == sorted(symbols)
    sort_by(page, "symbol")
    symbols = page.locator("#results-table tbody tr td:nth-child(2) strong").all_text_contents()
    assert symbols == sorted(symbols, reverse=True)
    assert page.locator("#stage-timing-chart svg g.bar").count() == 4

    with page.expect_download() as download_info:
        page.click("#download-csv")
    download = download_info.value
    assert download.suggested_filename == f"technic-{scan_id}.csv"
    target = tmp_path / download.suggested_filename
    download.save_as(str(target))
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    total = server.api("GET", f"/scan/results/{scan_id}?limit=1")["total"]
    assert len(rows) == total > 0
    assert {"rank", "symbol", "tech_rating", "signal", "entry", "stop", "target"} <= set(rows[0])
    sort_by(page, "rank")
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "scan-completed", full_page=True)


def test_sectors_filter_the_scan(page: Any, server: Server) -> None:
    sample = server.api("GET", "/universe?provider=sample")
    assert len(sample["sectors"]) == 11 and "Telecommunications Services" in sample["sectors"]
    assert sample["symbols"] == 504 and "Application Software" in sample["industries"]
    assert server.api("GET", "/universe?provider=synthetic")["symbols"] is None
    page.goto(server.url + "/")
    chips = page.locator("#sector-list input")
    chips.first.wait_for()
    assert chips.count() == 11
    page.check("#sector-list input[value='Energy']")
    page.check("#sector-list input[value='Utilities']")
    page.fill("#field-max_symbols", "504")
    page.click("#start-form button[type=submit]")
    page.wait_for_url(re.compile(rf".*#/scan/{UUID}$"))
    wait_for_status(page, "Completed")
    page.wait_for_selector("#results-table tbody tr")
    sectors = set(page.locator("#results-table tbody tr td:nth-child(3)").all_text_contents())
    assert sectors and sectors <= {"Energy", "Utilities"}
    assert (
        "Energy" in page.locator(".config").text_content()
        or "2 sectors" in page.locator(".config").text_content()
    )


def test_server_errors_are_shown_next_to_the_field(
    page: Any, server: Server, console: Console
) -> None:
    console.allow(r"Failed to load resource: the server responded with a status of 400")
    page.goto(server.url + "/")
    page.wait_for_selector("#sector-list input")
    page.fill("#field-max_symbols", "0")
    page.click("#start-form button[type=submit]")
    error = page.locator("#error-max_symbols")
    error.wait_for()
    assert "between 1 and" in error.text_content()
    assert page.get_attribute("#field-max_symbols", "aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "field-max_symbols"
    assert "#/scan/" not in page.url

    page.fill("#field-max_symbols", "10")
    page.fill("#field-min_tech_rating", "150")
    page.click("#start-form button[type=submit]")
    page.locator("#error-min_tech_rating").wait_for()
    assert page.locator("#error-max_symbols").is_hidden()
    assert "between 0 and 100" in page.locator("#error-min_tech_rating").text_content()
    shot(page, "form-errors")


def test_cancel_a_running_scan(page: Any, server: Server) -> None:
    page.goto(server.url + "/")
    page.select_option("#field-provider", "synthetic")
    page.fill("#field-max_symbols", "60000")
    page.click("#start-form button[type=submit]")
    page.wait_for_url(re.compile(rf".*#/scan/{UUID}$"))
    page.wait_for_selector('li[data-stage="data_fetching"][data-status="running"]')
    page.click("#cancel")
    wait_for_status(page, "Cancelled")
    assert page.locator("#cancel").is_hidden()
    assert page.get_attribute('[aria-label="Overall progress"]', "data-status") == "cancelled"
    assert "cancelled" in page.locator(".outcome").text_content()
    assert page.locator("#results-table").count() == 0
    statuses = seen(page)["stages"][-1]["all"]
    assert "completed" in statuses.values() and "failed" in statuses.values(), statuses
    shot(page, "scan-cancelled")


def test_reloading_a_running_scan_resumes_it(page: Any, server: Server) -> None:
    scan_id = server.start_scan(provider="synthetic", max_symbols=60_000)  # runs for a while
    open_scan(page, server, scan_id)
    wait_overall_above(page, 6)  # data fetching under way
    shot(page, "scan-running")
    assert page.locator("#weighted-progress").text_content().endswith("% (weighted)")
    before = overall(page)
    page.reload()
    page.wait_for_selector(f'.scan[data-scan="{scan_id}"]')
    page.wait_for_function("window.__seen.overall.length > 0")
    first = seen(page)["overall"][0]
    assert first >= before, (first, before)  # where it was, not from zero
    assert page.get_attribute("li[data-stage='universe_loading']", "data-status") == "completed"
    wait_overall_above(page, first)  # and live again
    assert "Live · WebSocket" in seen(page)["connection"]
    shot(page, "scan-reloaded")
    server.api("POST", f"/scan/cancel/{scan_id}")
    wait_for_status(page, "Cancelled")
    assert seen(page)["overall"] == sorted(seen(page)["overall"])


@pytest.mark.parametrize(
    ("blocked", "expected"),
    [("websocket", "Live · SSE"), ("websocket+eventsource", "Live · polling")],
)
def test_falls_back_when_streams_are_blocked(
    page: Any, server: Server, blocked: str, expected: str
) -> None:
    page.add_init_script(BLOCK_WEBSOCKET)
    if "eventsource" in blocked:
        page.add_init_script(BLOCK_EVENTSOURCE)
    scan_id = server.start_scan(provider="synthetic", max_symbols=60_000)
    open_scan(page, server, scan_id)
    page.wait_for_function(
        "e => document.querySelector('.connection').textContent === e", arg=expected
    )
    before = overall(page)
    wait_overall_above(page, before)  # progress keeps arriving through the fallback
    server.api("POST", f"/scan/cancel/{scan_id}")
    wait_for_status(page, "Cancelled")
    record = seen(page)
    assert record["connection"][-2:] == [expected, "Finished"], record["connection"]
    assert record["overall"] == sorted(record["overall"])


def test_recent_scans_and_history(page: Any, server: Server) -> None:
    scan_id = server.api("POST", "/scan/start", {"max_symbols": 60, "async_mode": False})["scan_id"]
    page.goto(server.url + "/")
    row = page.locator(f"table.recent tbody tr[data-scan='{scan_id}']")
    row.wait_for()
    assert page.locator("table.recent tbody tr").count() >= 2
    assert row.locator(".badge").text_content() == "Completed"
    assert re.fullmatch(r"[\d.]+ s", row.locator("td:nth-child(4)").text_content())
    row.locator("a.scan-link").click()
    page.wait_for_url(re.compile(rf".*#/scan/{UUID}$"))
    wait_for_status(page, "Completed")

    page.click("nav a[data-nav='history']")
    page.wait_for_selector("#duration-chart svg")
    assert "dominates" in page.locator("#dominant").text_content()
    rows = page.locator("#stage-stats tbody tr")
    assert rows.count() == 4
    for i in range(4):
        cells = rows.nth(i).locator("td").all_text_contents()
        assert re.fullmatch(r"\d+", cells[0]) and cells[1].endswith("s") and cells[2].endswith("s")
    assert page.locator("#stage-stats tr.dominant").count() == 1
    assert page.locator("#duration-chart svg g.series").count() == 4
    assert page.locator("#duration-chart svg circle").count() >= 4 * 2
    shot(page, "history")

    # a phone-width screen: nothing wider than the screen, every view readable
    page.set_viewport_size({"width": 390, "height": 844})
    for name, hash_ in (("phone-history", "#/history"), ("phone-home", "#/")):
        page.goto(f"{server.url}/{hash_}")
        page.wait_for_selector("#duration-chart svg, table.recent tbody tr")
        assert page.evaluate("document.scrollingElement.scrollWidth <= innerWidth"), name
        shot(page, name)
    page.locator(f"table.recent tr[data-scan='{scan_id}'] a.scan-link").click()
    page.wait_for_selector("#results-table")
    assert page.evaluate("document.scrollingElement.scrollWidth <= innerWidth")
    shot(page, "phone-scan")


def test_the_api_link_opens_the_openapi_document(page: Any, server: Server) -> None:
    page.goto(server.url + "/")
    with page.expect_response(f"{server.url}/openapi.json") as answer:
        page.locator("footer a", has_text="API").click()
    assert answer.value.ok
    assert answer.value.json()["openapi"] == "3.1.0"
    page.wait_for_url(f"{server.url}/openapi.json")


def test_reconnects_after_a_server_restart_with_a_token(
    browser: Any, pg_server_url: str, tmp_path: Path, console: Console
) -> None:
    """A token-protected server dies while a scan runs: the page says it is reconnecting,
    then, once the server is back, shows how that scan ended (interrupted)."""
    console.allow(r"ERR_CONNECTION_REFUSED|WebSocket connection to .* failed|ERR_EMPTY_RESPONSE")
    with (
        running_server(
            pg_server_url,
            tmp_path / "data",
            "browser-restart-server.log",
            TECHNIC_API_TOKEN="s3cret",
        ) as service,
        new_tab(browser, console) as tab,
    ):
        _watch_through_a_crash(service, tab)
    assert console.errors == []


def _watch_through_a_crash(service: Server, tab: Any) -> None:
    tab.goto(f"{service.url}/?token=s3cret#/")
    tab.wait_for_selector("#sector-list input")
    assert "token" not in tab.url  # kept for the tab, not in links people share
    tab.select_option("#field-provider", "synthetic")
    tab.fill("#field-max_symbols", "60000")
    tab.click("#start-form button[type=submit]")  # POST with the bearer token
    tab.wait_for_url(re.compile(rf".*#/scan/{UUID}$"))
    scan_id = tab.url.rsplit("/", 1)[1]
    tab.wait_for_function(  # the WebSocket with ?token=
        "document.querySelector('.connection')?.textContent === 'Live · WebSocket'"
    )
    # a crash before the scan is written down would leave nothing to come back to
    wait_until(lambda: scan_id in running_scans(service))
    service.kill()
    tab.wait_for_selector(".banner.reconnecting:not([hidden])", timeout=10_000)
    shot(tab, "reconnecting")
    service.start()
    wait_for_status(tab, "Interrupted")
    assert tab.locator(".banner.reconnecting").is_hidden()
    assert tab.locator(".connection").text_content() == "Finished"
    assert "interrupted" in tab.locator(".outcome").text_content()
    shot(tab, "after-restart")


def test_history_shows_how_right_the_etas_were(
    browser: Any, pg_server_url: str, tmp_path: Path, console: Console
) -> None:
    """A server of its own: no scan measured, then three real scans measured, and the chart
    and its words say what GET /stats/accuracy says."""
    with (
        running_server(pg_server_url, tmp_path / "data", "browser-accuracy-server.log") as service,
        new_tab(browser, console) as tab,
    ):
        tab.goto(f"{service.url}/#/history")
        empty = tab.locator("#accuracy-chart .empty")
        empty.wait_for()
        assert "No scan in this window has a measured ETA yet" in empty.text_content()
        assert tab.locator("#accuracy-summary li").count() == 0

        scan_ids = [
            service.api("POST", "/scan/start", {"max_symbols": 300, "async_mode": False})["scan_id"]
            for _ in range(3)
        ]
        stats = service.api("GET", "/stats/accuracy?since=7d")
        assert {scan["scan_id"] for scan in stats["recent"]} == set(scan_ids)
        tab.reload()
        tab.wait_for_selector("#accuracy-chart svg g.scan-errors")
        shot(tab, "history-accuracy", full_page=True)

        # one faint line per measured scan, one dot per checkpoint it has an error for
        for scan in stats["recent"]:
            line = tab.locator(f"#accuracy-chart g.scan-errors[data-scan='{scan['scan_id']}']")
            scored = [v for v in scan["error_pct"].values() if v is not None]
            assert line.locator("circle").count() == len(scored), scan
        assert tab.locator("#accuracy-chart g.scan-errors").count() == 3
        # a bold median line per group, the ±10 % band, every checkpoint on the x axis
        assert tab.locator("#accuracy-chart g.median-errors").count() == len(stats["groups"])
        assert tab.locator("#accuracy-chart g.band line").count() == 2
        labels = tab.locator("#accuracy-chart g.x-axis text").all_text_contents()
        assert [f"{p['checkpoint']}%" for p in stats["groups"][0]["checkpoints"]] == labels[:-1]

        # the words carry the API's figures
        words = tab.locator("#accuracy-summary li").all_text_contents()
        assert len(words) == len(stats["groups"]) == 1, words
        group = stats["groups"][0]
        first = group["checkpoints"][0]
        assert first["checkpoint"] == 10 and first["count"] == 3
        within = round(group["within_10pct_at_10"] * first["count"])
        assert f"ETA within 10% at the 10% mark for {within} of 3 scans" in words[0]
        assert f"time bar linearity R² {group['median_time_linearity']:.2f}" in words[0]
        assert f"(weighted bar {group['median_overall_linearity']:.2f})" in words[0]
        assert words[0].startswith(f"S&P 500 sample, {group['bucket'].replace('-', '–')}")

        tab.set_viewport_size({"width": 390, "height": 844})  # a phone: redrawn to fit
        tab.wait_for_function(
            "document.querySelector('#accuracy-chart svg').getAttribute('width') < 390"
        )
        assert tab.evaluate("document.scrollingElement.scrollWidth <= innerWidth")
        tab.locator("#accuracy-chart").scroll_into_view_if_needed()
        shot(tab, "phone-history-accuracy")
    assert console.errors == []


def seed_trend(database_url: str) -> None:
    """tests/test_stage_trend.py's months of timings, written on a loop of its own in a worker
    thread (Playwright's sync API keeps a loop running in the test thread)."""

    async def seed() -> None:
        database = await connect_url(database_url, migrate=False, max_size=2)
        try:
            await seed_history(database.repository)
        finally:
            await database.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, seed()).result()


def test_history_flags_the_slower_stage_and_lists_an_intervals_scans(
    browser: Any, pg_server_url: str, tmp_path: Path, console: Console
) -> None:
    """Months of stage timings with symbol scanning 40 % slower from ONSET and data fetching
    noisy but steady: one line per stage, the regression in words, an interval's scans."""
    with (
        running_server(pg_server_url, tmp_path / "data", "browser-trend-server.log") as service,
        new_tab(browser, console) as tab,
    ):
        tab.goto(f"{service.url}/#/history")
        empty = tab.locator("#trend-chart .empty")
        empty.wait_for()
        assert "No stage timings in this window yet" in empty.text_content()
        assert tab.locator("#trend-verdicts li").count() == 0

        seed_trend(service.env["DATABASE_URL"])
        tab.reload()
        tab.select_option("#history-window", "30d")
        trend = service.api("GET", "/stats/stages/trend?since=30d&interval=1d")
        # the 7-day chart drawn first is replaced by the 30-day one: wait for all its days
        tab.wait_for_function(
            "n => document.querySelectorAll('#trend-chart rect.pick').length === n",
            arg=len(trend["stages"][0]["intervals"]),
        )
        stages = [row["stage"] for row in trend["stages"]]
        assert stages == ["data_fetching", "symbol_scanning"]
        lines = tab.locator("#trend-chart g.series")
        assert [lines.nth(i).get_attribute("data-stage") for i in range(2)] == stages
        for row in trend["stages"]:
            dots = tab.locator(f"#trend-chart g.series[data-stage='{row['stage']}'] circle")
            assert dots.count() == len(row["intervals"]) >= 30

        slower = tab.locator("#trend-verdicts li[data-trend='slower']")
        assert slower.count() == 1
        words = slower.text_content()
        match = re.search(r"Symbol Scanning p50 \+(\d+) % since (\w+ \d+)", words)
        assert match, words
        assert abs(int(match[1]) - 40) <= 6, words
        assert match[2] == f"{ONSET:%b} {ONSET.day}", words
        steady = tab.locator("#trend-verdicts li[data-stage='data_fetching']").text_content()
        assert steady.startswith("Data Fetching p50 steady"), steady
        shot(tab, "history-trend", full_page=True)

        # the onset day's scans: the twelve the seed wrote that day, newest first
        day_scans = [
            scan
            for scan in service.api("GET", "/scans?since=8d&limit=500")["scans"]
            if ONSET.isoformat() <= scan["created_at"] < (ONSET + timedelta(days=1)).isoformat()
        ]
        assert len(day_scans) == 12
        tab.click(f"#trend-chart rect.pick[data-start='{ONSET.isoformat()}']")
        rows = tab.locator("#interval-scans tbody tr")
        tab.wait_for_function("document.querySelectorAll('#interval-scans tbody tr').length > 0")
        assert [rows.nth(i).get_attribute("data-scan") for i in range(rows.count())] == [
            scan["scan_id"] for scan in day_scans
        ]
        assert tab.locator("#interval-scans-title").text_content() == f"Scans of {match[2]}"
        assert "12 scans created in this interval" in tab.locator("#interval-scans").text_content()
        what = tab.locator("#interval-scans td.what").all_text_contents()
        assert sum(text.startswith("Polygon") for text in what) == 3, what  # k % 4 == 0
        picked = tab.locator("#trend-chart rect.pick.picked")
        assert picked.get_attribute("data-start") == ONSET.isoformat()
        assert picked.get_attribute("aria-pressed") == "true"
        tab.locator("#interval-scans").scroll_into_view_if_needed()
        shot(tab, "history-trend-interval")

        # the keyboard picks too: one tab stop, the arrows move along it, Enter picks
        assert tab.locator("#trend-chart rect.pick[tabindex='0']").count() == 1
        assert tab.evaluate("document.activeElement.dataset.start") == ONSET.isoformat()
        before = ONSET - timedelta(days=1)
        tab.keyboard.press("ArrowLeft")
        tab.keyboard.press("Enter")
        tab.wait_for_function(
            "t => document.querySelector('#interval-scans-title').textContent === t",
            arg=f"Scans of {before:%b} {before.day}",
        )
        tab.wait_for_function("document.querySelectorAll('#interval-scans tbody tr').length === 12")

        # weekly: fewer, wider points, and still one line per stage
        tab.select_option("#trend-interval", "1w")
        tab.wait_for_function(
            "document.querySelector('#trend-chart svg')?.ariaLabel?.endsWith('per week')"
        )
        assert tab.locator("#trend-chart g.series").count() == 2
        assert tab.locator("#interval-scans").is_hidden()

        tab.set_viewport_size({"width": 390, "height": 844})  # a phone: redrawn to fit
        tab.wait_for_function(
            "document.querySelector('#trend-chart svg').getAttribute('width') < 390"
        )
        assert tab.evaluate("document.scrollingElement.scrollWidth <= innerWidth")
        tab.locator("#trend-verdicts").scroll_into_view_if_needed()
        shot(tab, "phone-history-trend")
    assert console.errors == []
