"""Results of a finished scan: one way to read them, whatever the server still holds.

Results are always read from storage, sorted, filtered and paged by the repository's one
SQL statement, so the same request answers the same before and after a restart. JSON pages
hold at most 1000 rows; the CSV export streams every row of a stored scan. Rows leave the
server's memory once they are stored. Every test runs a real server (in process through
aiohttp's runner, or a real ``technic serve``) on a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from technic.storage import RESULT_SORTS, SIGNALS, connect_url

from tests.live_server import Server, running_server, wait_until
from tests.test_server import Service, TcpProxy, serve, settings_for

WHOLE_SAMPLE = {"max_symbols": 504}


async def _json(service: Service, path: str) -> Any:
    response = await service.get(path)
    assert response.status == 200, await response.text()
    return await response.json()


async def _every_order(service: Service, scan_id: str) -> dict[str, list[str]]:
    """The symbols of the first page in every sort order the API offers, both directions."""
    seen = {}
    for key in RESULT_SORTS:
        for order in ("asc", "desc"):
            body = await _json(service, f"/scan/results/{scan_id}?sort={key}&order={order}")
            seen[f"{key} {order}"] = [row["symbol"] for row in body["results"]]
    return seen


async def test_every_sort_order_reads_the_same_before_and_after_a_restart(
    database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(database_url, tmp_path)
    async with serve(settings) as service:
        scan_id = await service.start(WHOLE_SAMPLE)
        await service.wait_for(scan_id, {"completed"})
        before = await _every_order(service, scan_id)
        rows = (await _json(service, f"/scan/results/{scan_id}"))["results"]
    async with serve(settings) as service:
        after = await _every_order(service, scan_id)
    assert after == before

    by_symbol = {row["symbol"]: row for row in rows}
    # signals rank from Strong Buy to Strong Sell (not alphabetically), reversed for desc
    signal_ranks = [SIGNALS.index(by_symbol[s]["signal"]) for s in before["signal asc"]]
    assert signal_ranks == sorted(signal_ranks) and signal_ranks[0] == 0
    signal_ranks = [SIGNALS.index(by_symbol[s]["signal"]) for s in before["signal desc"]]
    assert signal_ranks == sorted(signal_ranks, reverse=True)
    # a missing value (one symbol of the sample has too short a history for ret_21d) is
    # last in both directions
    missing = [row["symbol"] for row in rows if row["ret_21d"] is None]
    assert missing, "the sample no longer has a symbol without ret_21d"
    for order in ("asc", "desc"):
        assert before[f"ret_21d {order}"][-len(missing) :] == missing
    # ties are broken by rank
    ranks_by_signal = [
        (SIGNALS.index(by_symbol[s]["signal"]), by_symbol[s]["rank"]) for s in before["signal asc"]
    ]
    assert ranks_by_signal == sorted(ranks_by_signal)


async def test_json_pages_have_one_limit_wherever_the_scan_is(
    database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(database_url, tmp_path)
    async with serve(settings) as service:
        scan_id = await service.start({"max_symbols": 30})
        await service.wait_for(scan_id, {"completed"})
        fresh = await service.get(f"/scan/results/{scan_id}?limit=1001")
        fresh_body = await fresh.json()
        assert (await service.get(f"/scan/results/{scan_id}?limit=1000")).status == 200
    async with serve(settings) as service:
        stored = await service.get(f"/scan/results/{scan_id}?limit=1001")
        stored_body = await stored.json()
    assert (fresh.status, stored.status) == (400, 400)
    assert fresh_body == stored_body
    assert stored_body["field"] == "limit"
    assert "between 1 and 1000" in stored_body["error"]


async def _csv_rows(service: Service, path: str) -> tuple[aiohttp.ClientResponse, list[dict]]:
    response = await service.get(path)
    assert response.status == 200, await response.text()
    return response, list(csv.DictReader(io.StringIO(await response.text(), newline="")))


async def test_csv_of_a_stored_scan_streams_every_row(database_url: str, tmp_path: Path) -> None:
    settings = settings_for(database_url, tmp_path)
    scan = {"provider": "synthetic", "max_symbols": 2500, "bars": 40}
    async with serve(settings) as service:
        scan_id = await service.start(scan)
        await service.wait_for(scan_id, {"completed"})
        await service.settled()
    async with serve(settings) as service:
        total = (await _json(service, f"/scan/results/{scan_id}?limit=1"))["total"]
        assert total > 1000
        # the page's "Download CSV" link
        response, rows = await _csv_rows(
            service, f"/scan/results/{scan_id}?format=csv&limit=100000"
        )
        assert response.headers["Content-Type"].startswith("text/csv")
        assert "attachment" in response.headers["Content-Disposition"]
        assert response.headers.get("Transfer-Encoding") == "chunked"  # streamed
        assert [int(row["rank"]) for row in rows] == list(range(1, total + 1))
        # the same order as the JSON pages, for any sort; CSV's limit has no 1000 cap
        _, by_close = await _csv_rows(
            service, f"/scan/results/{scan_id}?format=csv&sort=-close&limit=1500&offset=10"
        )
        assert len(by_close) == 1500
        page = await _json(service, f"/scan/results/{scan_id}?sort=-close&limit=1000&offset=10")
        assert [row["symbol"] for row in by_close[:1000]] == [r["symbol"] for r in page["results"]]
        bad = await service.get(f"/scan/results/{scan_id}?format=csv&limit=0")
        assert (bad.status, (await bad.json())["field"]) == (400, "limit")


async def test_csv_cut_short_by_the_database_is_not_a_whole_file(
    database_url: str, tmp_path: Path
) -> None:
    """The status line is sent before the rows: if the database goes away mid-export the
    body ends without its last chunk, so no client takes the part for the whole."""
    proxy = TcpProxy(database_url)
    await proxy.start()
    try:
        async with serve(settings_for(proxy.url, tmp_path)) as service:
            scan_id = await service.start(
                {"provider": "synthetic", "max_symbols": 30_000, "bars": 30}
            )
            await service.wait_for(scan_id, {"completed"})
            await service.settled()
            response = await service.get(f"/scan/results/{scan_id}?format=csv")
            assert response.status == 200
            head = await response.content.read(65536)
            await proxy.cut()
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(response.content.read(), 30)
            assert head.startswith(b"rank,symbol,")
    finally:
        await proxy.cut()


async def test_csv_cells_cannot_be_spreadsheet_formulas(database_url: str, tmp_path: Path) -> None:
    hostile = ['=HYPERLINK("http://x.example")', "+1+1", "-2+3", "@SUM(A1)", "\tTab", "\rCR"]
    database = await connect_url(database_url, migrate=False)
    scan_id = uuid.uuid4()
    try:
        repository = database.repository
        await repository.create_scan(scan_id, {"max_symbols": len(hostile)})
        await repository.transition(scan_id, "running")
        rows = [
            {
                "rank": i + 1,
                "symbol": f"S{i}",
                "name": name,
                "sector": "=cmd|' /C calc'!A0",
                "signal": "Buy",
                "tech_rating": 60.0 - i,
                "ret_1d": -0.0125,
                "close": 10.0,
            }
            for i, name in enumerate(hostile)
        ]
        await repository.save_results(scan_id, rows)
        await repository.transition(scan_id, "completed")
    finally:
        await database.close()
    async with serve(settings_for(database_url, tmp_path)) as service:
        _, cells = await _csv_rows(service, f"/scan/results/{scan_id}?format=csv")
    assert [row["name"] for row in cells] == [f"'{name}" for name in hostile]
    assert {row["sector"] for row in cells} == {"'=cmd|' /C calc'!A0"}
    assert {row["ret_1d"] for row in cells} == {"-0.0125"}  # a negative number stays a number


async def test_sync_start_answers_once_the_results_are_stored(
    database_url: str, tmp_path: Path
) -> None:
    """Right after a scan ends its rows are still being written: the synchronous start (like
    any results request) waits for storage instead of answering from memory. (While the
    database is away it answers 503: see the outage test in test_server.py.)"""
    async with serve(settings_for(database_url, tmp_path)) as service:
        response = await service.post(
            "/scan/start",
            {"provider": "synthetic", "max_symbols": 5000, "bars": 40, "async_mode": False},
        )
        body = await response.json()
        assert response.status == 200, body
        assert body["total"] + len(body["failures"]) == 5000
        assert body["count"] == min(1000, body["total"])


# -- memory ---------------------------------------------------------------------------------


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _scan_and_store(server: Server, body: dict[str, Any]) -> str:
    scan_id = server.start_scan(**body)
    wait_until(lambda: server.api("GET", f"/scan/progress/{scan_id}")["status"] == "completed", 120)
    wait_until(lambda: server.api("GET", "/health")["database_backlog"] == 0, 60)
    return scan_id


def test_finished_scans_do_not_keep_their_rows_in_memory(
    pg_server_url: str, tmp_path: Path
) -> None:
    """Four 15,000-symbol scans on a real ``technic serve``: its memory after the fourth is
    about what it was after the first (kept rows would add ~30 MiB a scan)."""
    big = {"provider": "synthetic", "max_symbols": 15_000, "bars": 30}
    with running_server(pg_server_url, tmp_path, "results-memory.log") as server:
        assert server.process is not None
        pid = server.process.pid
        _scan_and_store(server, big)
        first_mib = _rss_mib(pid)
        started = time.monotonic()
        for seed in range(1, 4):
            scan_id = _scan_and_store(server, {**big, "seed": seed})
        last_mib = _rss_mib(pid)
        page = server.api("GET", f"/scan/results/{scan_id}?limit=3")
        assert page["total"] == 15_000 - len(page["failures"]) and page["count"] == 3
    print(f"RSS {first_mib:.0f} -> {last_mib:.0f} MiB in {time.monotonic() - started:.1f} s")
    assert last_mib - first_mib < 30, (first_mib, last_mib)
