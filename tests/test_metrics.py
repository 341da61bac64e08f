"""``GET /metrics`` scraped from a real server and read with prometheus_client's own parser:
what the server says it did must be what the test did to it.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from technic.server.app import HUB

from tests.test_server import Service, serve, settings_for, sse_events, ws_snapshots

pytestmark = pytest.mark.asyncio(loop_scope="session")

SCAN = {"provider": "synthetic", "max_symbols": 200, "bars": 300}
LATENCY = "technic_http_request_duration_seconds"


async def scrape(service: Service) -> dict[str, list[Sample]]:
    """Every sample by family name, parsed the way Prometheus would read the page."""
    response = await service.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = text_string_to_metric_families(await response.text())
    return {family.name: family.samples for family in families}


async def until_idle(service: Service, timeout_s: float = 30) -> None:
    """Until no scan runs: a watcher sees the terminal snapshot before the job manager has
    recorded the end, and metrics count what the job manager recorded."""
    deadline = time.monotonic() + timeout_s
    while (await (await service.get("/scan/active")).json())["active"]:
        assert time.monotonic() < deadline, "a scan is still running"
        await asyncio.sleep(0.05)


def value(samples: list[Sample], name: str, **labels: str) -> float:
    matching = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(matching) == 1, (name, labels, [s for s in samples if s.name == name])
    return matching[0]


def buckets(samples: list[Sample], name: str, **labels: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of one histogram series, in bound order."""
    found = [
        (float(s.labels["le"]), s.value)
        for s in samples
        if s.name == f"{name}_bucket" and {k: v for k, v in s.labels.items() if k != "le"} == labels
    ]
    return sorted(found)


def assert_histogram(samples: list[Sample], name: str, count: int, **labels: str) -> None:
    series = buckets(samples, name, **labels)
    assert len(series) > 5 and series[-1][0] == math.inf, series
    cumulative = [n for _, n in series]
    assert cumulative == sorted(cumulative), series
    assert series[-1][1] == value(samples, f"{name}_count", **labels) == count
    assert value(samples, f"{name}_sum", **labels) >= 0


async def test_metrics_count_what_was_done(database_url: str, tmp_path: Path) -> None:
    async with serve(settings_for(database_url, tmp_path)) as service:
        first = await service.start(SCAN)
        sse = await service.get(f"/scan/stream/{first}")
        (ws_seen, close_code), events = await asyncio.gather(
            ws_snapshots(service, first), sse_events(sse)
        )
        assert close_code == 1000
        await service.wait_for(first, {"completed"})
        second = await service.start(SCAN)  # the same symbols: its block comes from the cache
        await service.wait_for(second, {"completed"})
        await until_idle(service)
        for _ in range(3):
            assert (await service.get("/scans?limit=5")).status == 200
        unknown = "00000000-0000-4000-8000-000000000000"
        assert (await service.get(f"/scan/progress/{unknown}")).status == 404
        assert (await service.post("/scan/start", {"max_symbols": 0})).status == 400
        assert (await service.session.request("PROPFIND", f"{service.url}/scans")).status == 405

        samples = await scrape(service)

    latency = samples[LATENCY]
    assert_histogram(latency, LATENCY, 3, route="/scans", method="GET", status="200")
    route = "/scan/progress/{scan_id}"
    assert_histogram(latency, LATENCY, 1, route=route, method="GET", status="404")
    assert_histogram(latency, LATENCY, 1, route="/scan/start", method="POST", status="400")
    assert_histogram(latency, LATENCY, 2, route="/scan/start", method="POST", status="202")
    # An unknown method is "other", so a client cannot mint label values.
    assert_histogram(latency, LATENCY, 1, route="unmatched", method="other", status="405")
    # Streams are watchers, not timed requests.
    timed_routes = {s.labels["route"] for s in latency}
    assert not timed_routes & {"/scan/ws/{scan_id}", "/scan/stream/{scan_id}"}

    finished = samples["technic_scans_finished"]
    assert value(finished, "technic_scans_finished_total", status="completed") == 2
    assert value(finished, "technic_scans_finished_total", status="failed") == 0
    for stage in ("universe_loading", "data_fetching", "symbol_scanning", "finalization"):
        assert_histogram(
            samples["technic_stage_duration_seconds"],
            "technic_stage_duration_seconds",
            2,
            stage=stage,
        )
    cache = samples["technic_block_cache_lookups"]
    assert value(cache, "technic_block_cache_lookups_total", result="miss") == 1
    assert value(cache, "technic_block_cache_lookups_total", result="hit") == 1

    frames = samples["technic_frames_sent"]
    assert value(frames, "technic_frames_sent_total", transport="websocket") == len(ws_seen)
    # The terminal snapshot is written once as two events (unnamed, then named): one frame.
    sse_snapshots = {e["id"] for e in events if "data" in e}
    assert value(frames, "technic_frames_sent_total", transport="sse") == len(sse_snapshots)
    connected = samples["technic_watchers_connected"]
    assert value(connected, "technic_watchers_connected_total", transport="websocket") == 1
    assert value(connected, "technic_watchers_connected_total", transport="sse") == 1
    for transport in ("websocket", "sse"):
        assert value(samples["technic_watchers"], "technic_watchers", transport=transport) == 0
    for state in ("running", "queued"):
        assert value(samples["technic_scans"], "technic_scans", state=state) == 0
    hub = service.app[HUB].stats()
    published = samples["technic_snapshots_published"]
    assert value(published, "technic_snapshots_published_total") == hub.published > 0
    conflated = samples["technic_snapshots_conflated"]
    assert value(conflated, "technic_snapshots_conflated_total") == hub.conflated
    assert value(samples["process_resident_memory_bytes"], "process_resident_memory_bytes") > 0


async def test_watchers_are_counted_while_connected(database_url: str, tmp_path: Path) -> None:
    slow = {"provider": "synthetic", "max_symbols": 60_000, "bars": 300}
    async with serve(settings_for(database_url, tmp_path)) as service:
        scan_id = await service.start(slow)
        async with service.session.ws_connect(f"{service.url}/scan/ws/{scan_id}") as ws:
            await ws.receive(timeout=10)
            sse = await service.get(f"/scan/stream/{scan_id}")
            await sse.content.readline()  # the retry line: the stream is open
            samples = await scrape(service)
            sse.close()
        await service.post(f"/scan/cancel/{scan_id}")
        await service.wait_for(scan_id, {"cancelled"})
        await until_idle(service)
        after = await scrape(service)
    watchers = samples["technic_watchers"]
    assert value(watchers, "technic_watchers", transport="websocket") == 1
    assert value(watchers, "technic_watchers", transport="sse") == 1
    assert value(samples["technic_scans"], "technic_scans", state="running") == 1
    finished = after["technic_scans_finished"]
    assert value(finished, "technic_scans_finished_total", status="cancelled") == 1


async def test_each_application_has_its_own_registry(database_url: str, tmp_path: Path) -> None:
    """Two servers in one process: neither sees the other's requests or scans."""
    async with (
        serve(settings_for(database_url, tmp_path / "a")) as busy,
        serve(settings_for(database_url, tmp_path / "b")) as idle,
    ):
        scan_id = await busy.start({"max_symbols": 5})
        await busy.wait_for(scan_id, {"completed"})
        await until_idle(busy)
        busy_samples, idle_samples = await scrape(busy), await scrape(idle)
    completed = {"status": "completed"}
    assert value(
        busy_samples["technic_scans_finished"], "technic_scans_finished_total", **completed
    )
    assert not value(
        idle_samples["technic_scans_finished"], "technic_scans_finished_total", **completed
    )
    idle_routes = {s.labels["route"] for s in idle_samples[LATENCY]}
    assert idle_routes == set(), idle_routes  # its only request is the scrape being answered


async def test_prometheus_gets_openmetrics_when_it_asks(database_url: str, tmp_path: Path) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    async with serve(settings_for(database_url, tmp_path)) as service:
        response = await service.get("/metrics", headers={"Accept": accept})
        text = await response.text()
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    assert "technic_http_request_duration_seconds" in text
