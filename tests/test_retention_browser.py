"""The page on a scan whose results retention pruned: it says so, in the server's words."""

# ruff: noqa: F811 (the test's parameters are the fixtures imported below)

from __future__ import annotations

from typing import Any

from tests.live_server import Server, _run_sql

# the browser fixtures of tests/test_browser.py, imported so that pytest finds them here
from tests.test_browser import browser, console, open_scan, page, server, shot  # noqa: F401
from tests.test_retention_server import technic


def test_a_pruned_scan_says_its_results_were_pruned(
    page: Any, server: Server, console: Any
) -> None:
    console.allow(r"status of 410")  # the browser logs every error answer it fetched
    scan_id = server.api("POST", "/scan/start", {"max_symbols": 20, "async_mode": False})["scan_id"]
    database_url = server.env["DATABASE_URL"]
    _run_sql(
        database_url,
        "UPDATE scans SET created_at = created_at - interval '40 days',"
        " started_at = started_at - interval '40 days',"
        f" finished_at = finished_at - interval '40 days' WHERE id = '{scan_id}'",
    )
    pruned = technic(
        "prune", DATABASE_URL=database_url, TECHNIC_DATA_DIR=server.env["TECHNIC_DATA_DIR"]
    )
    assert pruned.returncode == 0, pruned.stderr

    open_scan(page, server, scan_id)
    message = page.locator(f'.scan[data-scan="{scan_id}"] .form-error')
    message.wait_for()
    shot(page, "retention-pruned-scan")
    text = message.text_content()
    assert f"the results of scan {scan_id} were pruned on" in text
    assert "RESULTS_RETENTION_DAYS, now 30 days" in text
    assert "its record and stage timings are kept" in text
