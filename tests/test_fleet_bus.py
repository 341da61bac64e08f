"""The fleet's data plane with real components: a real ``redis-server`` (tests/redis_server.py)
and two real ``technic serve`` processes on one PostgreSQL database. A scan runs on the
instance that received ``POST /scan/start`` (A); it is watched, resumed and asked about on the
other (B), also while Redis restarts (empty) and while it is down.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.live_server import OUTPUT, Server, _free_port, fresh_database, server_env, wait_until
from tests.redis_server import RedisServer, running_redis

LONG_SCAN = {"provider": "synthetic", "max_symbols": 60_000}
WATCH_TIMEOUT_S = 120.0


@dataclass
class Fleet:
    redis: RedisServer
    a: Server
    b: Server


@pytest.fixture(scope="module")
def fleet(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with running_redis(root / "redis") as redis, fresh_database(pg_server_url) as database_url:
        servers = []
        try:
            for name in ("a", "b"):
                env = server_env(database_url, root / name, REDIS_URL=redis.url)
                server = Server(env, OUTPUT / f"fleet-{name}.log")
                server.log_path.write_bytes(b"")
                server.start()
                servers.append(server)
            yield Fleet(redis, *servers)
        finally:
            for server in servers:
                server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WATCH_TIMEOUT_S)) as s:
        yield s


def get_json(server: Server, path: str) -> tuple[int, Any]:
    """Status and body of a GET, whatever the status (a 5xx must be seen, not raised)."""
    try:
        with urllib.request.urlopen(f"{server.url}{path}", timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read() or b"null")


async def ws_watch(
    session: aiohttp.ClientSession, server: Server, scan_id: str, query: str = ""
) -> tuple[list[dict], int | None]:
    snapshots = []
    async with session.ws_connect(f"{server.url}/scan/ws/{scan_id}{query}") as ws:
        async for message in ws:
            assert message.type == aiohttp.WSMsgType.TEXT
            snapshots.append(orjson.loads(message.data))
        return snapshots, ws.close_code


async def sse_watch(
    session: aiohttp.ClientSession, server: Server, scan_id: str, last_event_id: str | None = None
) -> tuple[list[tuple[str, dict]], aiohttp.ClientResponse]:
    """(id, snapshot) of every unnamed event to the end, and the response."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[tuple[str, dict]] = []
    async with session.get(f"{server.url}/scan/stream/{scan_id}", headers=headers) as response:
        if response.status != 200:
            return events, response
        current: dict[str, str] = {}
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if "data" in current and "event" not in current:
                    events.append((current["id"], orjson.loads(current["data"])))
                current = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(":")
                current[key] = value.lstrip(" ")
        return events, response


def assert_one_stream(snapshots: list[dict], epoch: str) -> None:
    """In order, never a duplicate or a seq going back, the owner's epoch, one terminal end.

    A watcher that connects before the owner's first snapshot reached Redis is first shown
    the state stored in the database (in this instance's epoch); from the owner's first
    snapshot on, everything is the owner's stream."""
    owners = [snapshot for snapshot in snapshots if snapshot["epoch"] == epoch]
    assert snapshots[len(snapshots) - len(owners) :] == owners
    seqs = [snapshot["seq"] for snapshot in owners]
    assert seqs == sorted(set(seqs)), seqs
    assert [s["status"] for s in snapshots].count("completed") == 1
    assert snapshots[-1]["status"] == "completed"
    progress = [snapshot["overall_progress"] for snapshot in snapshots]
    assert progress == sorted(progress)


async def first_progress(session: aiohttp.ClientSession, server: Server, scan_id: str) -> dict:
    """A snapshot of the scan at work (past the queued state), read over A's WebSocket."""
    async with session.ws_connect(f"{server.url}/scan/ws/{scan_id}") as ws:
        async for message in ws:
            snapshot = orjson.loads(message.data)
            if snapshot["status"] == "running" and snapshot["overall_progress"] > 0:
                return snapshot
    raise AssertionError(f"{scan_id} ended before it was seen at work")


async def test_a_scan_on_a_is_watched_on_b_over_websocket_and_sse(
    fleet: Fleet, session: aiohttp.ClientSession
) -> None:
    scan_id = fleet.a.start_scan(**LONG_SCAN)
    (ws_snapshots, close_code), (sse_events, response) = await asyncio.gather(
        ws_watch(session, fleet.b, scan_id), sse_watch(session, fleet.b, scan_id)
    )
    epoch = ws_snapshots[-1]["epoch"]
    assert_one_stream(ws_snapshots, epoch)
    assert close_code == 1000
    assert len(ws_snapshots) > 3  # live, not only the end
    assert response.headers["Connection"].lower() == "close"
    assert_one_stream([snapshot for _, snapshot in sse_events], epoch)
    assert [event_id for event_id, _ in sse_events] == [
        f"{snapshot['epoch']}.{snapshot['seq']}" for _, snapshot in sse_events
    ]
    # the owner's stream: the same final snapshot, byte for byte, on both instances
    final_a = urllib.request.urlopen(f"{fleet.a.url}/scan/progress/{scan_id}").read()
    final_b = urllib.request.urlopen(f"{fleet.b.url}/scan/progress/{scan_id}").read()
    assert final_a == final_b
    assert orjson.loads(final_b)["seq"] == ws_snapshots[-1]["seq"]


async def test_progress_of_a_remote_scan_is_the_owners_current_state(
    fleet: Fleet, session: aiohttp.ClientSession
) -> None:
    scan_id = fleet.a.start_scan(**LONG_SCAN)
    seen = await first_progress(session, fleet.a, scan_id)
    status, on_b = get_json(fleet.b, f"/scan/progress/{scan_id}")
    assert status == 200
    assert on_b["epoch"] == seen["epoch"] and on_b["seq"] >= seen["seq"]
    await ws_watch(session, fleet.b, scan_id)  # to the end, so the next test starts idle


async def test_a_watcher_resumes_on_b_with_the_cursor_a_gave_it(
    fleet: Fleet, session: aiohttp.ClientSession
) -> None:
    scan_id = fleet.a.start_scan(**LONG_SCAN)
    seen = await first_progress(session, fleet.a, scan_id)
    cursor = f"{seen['epoch']}.{seen['seq']}"
    (sse_events, _), (ws_snapshots, close_code) = await asyncio.gather(
        sse_watch(session, fleet.b, scan_id, last_event_id=cursor),
        ws_watch(session, fleet.b, scan_id, f"?since={cursor}"),
    )
    for snapshots in ([s for _, s in sse_events], ws_snapshots):
        assert snapshots[0]["seq"] > seen["seq"]  # what was missed, never what it had
        assert_one_stream(snapshots, seen["epoch"])
    assert close_code == 1000
    # a watcher that has the final state is told there is nothing more
    final_cursor = sse_events[-1][0]
    async with session.get(
        f"{fleet.b.url}/scan/stream/{scan_id}", headers={"Last-Event-ID": final_cursor}
    ) as response:
        assert response.status == 204


async def test_watchers_on_b_catch_up_when_redis_restarts_empty_mid_scan(
    fleet: Fleet, session: aiohttp.ClientSession
) -> None:
    scan_id = fleet.a.start_scan(**LONG_SCAN)
    seen = await first_progress(session, fleet.a, scan_id)
    cursor = f"{seen['epoch']}.{seen['seq']}"
    watcher = asyncio.create_task(ws_watch(session, fleet.b, scan_id))
    await asyncio.sleep(0.3)  # the watcher is connected (not a timing assertion)
    fleet.redis.restart()  # empty: the scan's key is gone
    snapshots, close_code = await watcher  # the same connection, to the end
    assert close_code == 1000
    assert_one_stream(snapshots, seen["epoch"])
    # the cursor from before the restart still names the same stream on B
    resumed, _ = await ws_watch(session, fleet.b, scan_id, f"?since={cursor}")
    assert resumed and resumed[0]["seq"] > seen["seq"]
    assert resumed[-1] == snapshots[-1]
    wait_until(lambda: get_json(fleet.b, "/health")[1].get("redis") == "ok", timeout_s=10)
    with urllib.request.urlopen(f"{fleet.b.url}/metrics", timeout=30) as response:
        exposition = response.read().decode()
    reconnects = re.search(r"^technic_redis_reconnects_total (\S+)$", exposition, re.M)
    assert reconnects is not None and float(reconnects[1]) >= 1
    assert 'technic_redis_messages_total{outcome="received"}' in exposition


async def test_redis_down_scans_run_and_nothing_answers_5xx(
    fleet: Fleet, session: aiohttp.ClientSession
) -> None:
    fleet.redis.stop()
    try:
        for server in (fleet.a, fleet.b):
            wait_until(lambda s=server: get_json(s, "/health")[1]["redis"] == "unavailable", 10)
            status, health = get_json(server, "/health")
            assert status == 200 and health["status"] == "degraded"
        scan_id = fleet.a.start_scan(provider="synthetic", max_symbols=3000)
        snapshots, close_code = await ws_watch(session, fleet.a, scan_id)
        assert close_code == 1000 and snapshots[-1]["status"] == "completed"

        def answered_from_the_database() -> bool:
            status, body = get_json(fleet.b, f"/scan/progress/{scan_id}")
            assert status < 500, body
            return status == 200 and body["status"] == "completed"

        wait_until(answered_from_the_database, timeout_s=30)
        on_b, close_code = await ws_watch(session, fleet.b, scan_id)
        assert close_code == 1000 and on_b[-1]["status"] == "completed"
    finally:
        fleet.redis.start()
    for server in (fleet.a, fleet.b):
        wait_until(lambda s=server: get_json(s, "/health")[1]["redis"] == "ok", timeout_s=10)


async def test_watchers_of_a_killed_instances_scan_get_its_end_from_the_database(
    fleet: Fleet, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    env = {**fleet.a.env, "TECHNIC_DATA_DIR": str(tmp_path)}
    doomed = Server(env, OUTPUT / "fleet-killed.log")
    doomed.log_path.write_bytes(b"")
    doomed.start()
    try:
        scan_id = doomed.start_scan(**LONG_SCAN)
        seen = await first_progress(session, doomed, scan_id)
        watcher = asyncio.create_task(ws_watch(session, fleet.b, scan_id))
        # B has heard the owner's stream (on a loaded machine Redis may lag a moment)
        for _ in range(200):
            if get_json(fleet.b, f"/scan/progress/{scan_id}")[1]["epoch"] == seen["epoch"]:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("B never heard the owner's snapshots through Redis")
        await asyncio.sleep(0.3)  # the watcher is connected (not a timing assertion)
    finally:
        doomed.kill()
    snapshots, close_code = await watcher  # B's ownership check interrupts it (same machine)
    assert close_code == 1000
    assert snapshots[-1]["status"] == "interrupted"
    assert snapshots[-1]["epoch"] == seen["epoch"]  # still the owner's stream for cursors
    seqs = [snapshot["seq"] for snapshot in snapshots]
    assert seqs == sorted(set(seqs))


def serve_once(tmp_path: Path, database_url: str, redis_url: str) -> subprocess.CompletedProcess:
    technic = Path(sys.executable).with_name("technic")
    env = server_env(database_url, tmp_path, REDIS_URL=redis_url, PORT=str(_free_port()))
    return subprocess.run(
        [str(technic), "serve"], env=env, capture_output=True, text=True, timeout=60
    )


def test_an_unreachable_redis_at_start_is_one_line_and_exit_1(fleet: Fleet, tmp_path: Path) -> None:
    database_url = fleet.a.env["DATABASE_URL"]
    closed = f"redis://127.0.0.1:{_free_port()}/0"
    finished = serve_once(tmp_path, database_url, closed)
    assert finished.returncode == 1
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1, finished.stderr
    assert lines[0].startswith("technic serve: error: Redis at REDIS_URL is unreachable")


def test_a_malformed_redis_url_is_one_line(fleet: Fleet, tmp_path: Path) -> None:
    database_url = fleet.a.env["DATABASE_URL"]
    for url, exit_code, message in (
        ("http://127.0.0.1:6379", 2, "REDIS_URL: must start with redis://, rediss:// or unix://"),
        ("redis://127.0.0.1:notaport/0", 1, "REDIS_URL cannot be used"),
    ):
        finished = serve_once(tmp_path, database_url, url)
        assert finished.returncode == exit_code, finished.stderr
        lines = finished.stderr.strip().splitlines()
        assert len(lines) == 1, finished.stderr
        assert message in lines[0]
