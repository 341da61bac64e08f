"""The fleet's control plane: two real ``technic serve`` on one database, REDIS_URL set.

One slot and one queue place each (MAX_CONCURRENT_SCANS=1, MAX_QUEUED_SCANS=1), so the
fleet runs two scans and queues two more. The queue, the cancels and /scan/active go
through PostgreSQL only (the servers never need the Redis the URL names; the data plane's
tests start their own). Heartbeats every second; a killed instance is proven dead by its
pid on this machine, and its scans are dealt with at the next heartbeat.
"""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.live_server import OUTPUT, Server, fresh_database, server_env, wait_until
from tests.redis_server import running_redis

# long enough to outlive every step below on one worker (test_ownership.py measured it)
SLOW_SCAN = {"provider": "synthetic", "max_symbols": 60_000, "bars": 530}
QUICK_SCAN = {"provider": "synthetic", "max_symbols": 50, "bars": 300}
OWNER_TIMEOUT_S = 30


@pytest.fixture
def fleet(pg_server_url: str, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with (
        running_redis(tmp_path / "redis") as redis,
        fresh_database(pg_server_url) as database_url,
        ExitStack() as stack,
    ):
        env = server_env(
            database_url,
            tmp_path / "data",
            REDIS_URL=redis.url,
            MAX_CONCURRENT_SCANS="1",
            MAX_QUEUED_SCANS="1",
            MAX_WORKERS="1",
            OWNER_HEARTBEAT_S="1",
            OWNER_TIMEOUT_S=str(OWNER_TIMEOUT_S),
        )
        servers = []
        for name in ("a", "b"):
            server = Server(env, OUTPUT / f"fleet-queue-{name}.log")
            server.log_path.write_bytes(b"")
            stack.callback(server.stop)
            server.start()
            servers.append(server)
        yield servers[0], servers[1]


def active(server: Server) -> dict[str, dict[str, Any]]:
    return {scan["scan_id"]: scan for scan in server.api("GET", "/scan/active")["active"]}


def status(server: Server, scan_id: str) -> str:
    return str(server.api("GET", f"/scan/progress/{scan_id}")["status"])


def stored(server: Server, scan_id: str) -> dict[str, Any]:
    scans = server.api("GET", "/scans?limit=50")["scans"]
    return next(scan for scan in scans if scan["scan_id"] == scan_id)


def server_of(instance: str, servers: tuple[Server, Server]) -> Server:
    """The server an owner name (host:pid:space:token) belongs to."""
    pid = int(instance.split(":")[1])
    return next(server for server in servers if server.process and server.process.pid == pid)


def refused(server: Server) -> tuple[int, int]:
    """The status and Retry-After of a start the server refuses."""
    with pytest.raises(urllib.error.HTTPError) as caught:
        server.api("POST", "/scan/start", SLOW_SCAN)
    with caught.value as error:
        return error.code, int(error.headers["Retry-After"])


def test_scans_queue_fleet_wide_and_are_cancelled_from_any_instance(
    fleet: tuple[Server, Server],
) -> None:
    a, b = fleet
    first = a.start_scan(**SLOW_SCAN)
    wait_until(lambda: active(b).get(first, {}).get("status") == "running")
    # whichever instance claimed it is busy: a second scan started there runs on the other
    owner_first = server_of(active(a)[first]["instance"], fleet)
    a, b = (owner_first, b if owner_first is a else a)
    second = a.start_scan(**SLOW_SCAN)
    wait_until(lambda: active(a).get(second, {}).get("status") == "running")
    instance_a, instance_b = active(a)[first]["instance"], active(a)[second]["instance"]
    assert instance_a != instance_b and None not in (instance_a, instance_b)
    assert status(b, second) == "running"  # B runs it: its own hub has the scan

    # two places left in the fleet's queue (one per instance), wherever they are asked for
    third = a.start_scan(**SLOW_SCAN)
    fourth = b.start_scan(**SLOW_SCAN)
    for server in (a, b):
        code, retry_after_s = refused(server)
        assert code == 429 and retry_after_s >= 1
        listed = server.api("GET", "/scan/active")
        assert (listed["running"], listed["queued"]) == (2, 2)
        assert [scan["scan_id"] for scan in listed["active"]] == [first, second, third, fourth]
        instances = [scan["instance"] for scan in listed["active"]]
        assert instances == [instance_a, instance_b, None, None]

    # a queued scan is cancelled by whichever instance is asked; every instance shows it
    answer = b.api("POST", f"/scan/cancel/{fourth}")
    assert (answer["status"], answer["message"]) == ("cancelled", "Scan cancelled")
    assert status(a, fourth) == status(b, fourth) == "cancelled"

    # a running scan is cancelled from the instance that does not run it, within a second
    # (asked while it scans symbols, as the single server's test does: a scan checks for a
    # cancel between chunks of work, and its fetching is one chunk on one worker)
    progress = f"/scan/progress/{second}"
    wait_until(lambda: b.api("GET", progress)["current_stage"] == "symbol_scanning")
    asked = time.monotonic()
    answer = a.api("POST", f"/scan/cancel/{second}")
    assert (answer["status"], answer["message"]) == ("running", "Cancellation requested")
    wait_until(lambda: status(b, second) == "cancelled", timeout_s=5)
    cancel_s = time.monotonic() - asked
    print(f"cancel from the other instance: {cancel_s * 1000:.0f} ms")
    assert cancel_s < 1.0
    # B's slot is free again: it claims the oldest queued scan
    wait_until(lambda: active(a).get(third, {}).get("instance") == instance_b)
    wait_until(lambda: stored(a, second)["status"] == "cancelled")


def test_a_killed_instances_running_scan_is_interrupted_and_the_queue_runs_elsewhere(
    fleet: tuple[Server, Server],
) -> None:
    first = fleet[0].start_scan(**SLOW_SCAN)
    second = fleet[0].start_scan(**SLOW_SCAN)
    wait_until(
        lambda: (
            [active(fleet[1]).get(i, {}).get("status") for i in (first, second)]
            == ["running", "running"]
        )
    )
    queued = fleet[1].start_scan(**SLOW_SCAN)
    listed = active(fleet[1])
    assert listed[queued]["instance"] is None
    dying_instance = listed[first]["instance"]
    dying = server_of(dying_instance, fleet)
    survivor = fleet[1] if dying is fleet[0] else fleet[0]
    survivor_instance = listed[second]["instance"]
    dying.kill()
    killed = time.monotonic()
    wait_until(
        lambda: stored(survivor, first)["status"] == "interrupted", timeout_s=OWNER_TIMEOUT_S + 5
    )
    print(f"the killed instance's scan interrupted after {time.monotonic() - killed:.1f} s")
    assert dying_instance in stored(survivor, first)["error"]
    assert active(survivor)[queued]["instance"] is None  # still queued: the survivor is busy
    survivor.api("POST", f"/scan/cancel/{second}")
    wait_until(lambda: active(survivor).get(queued, {}).get("instance") == survivor_instance)
    survivor.api("POST", f"/scan/cancel/{queued}")
    wait_until(lambda: status(survivor, queued) == "cancelled")


def test_a_synchronous_start_answers_with_the_results_of_a_scan_run_elsewhere(
    fleet: tuple[Server, Server],
) -> None:
    a, b = fleet
    busy = a.start_scan(**SLOW_SCAN)
    wait_until(lambda: active(a).get(busy, {}).get("status") == "running")
    busy_instance = active(a)[busy]["instance"]
    body = a.api("POST", "/scan/start", {**QUICK_SCAN, "async_mode": False})
    assert body["status"] == "completed" and body["count"] == len(body["results"]) > 0
    assert stored(b, body["scan_id"])["status"] == "completed"
    assert status(b, body["scan_id"]) == "completed"  # B ran it (A was busy)
    assert active(a)[busy]["instance"] == busy_instance
    a.api("POST", f"/scan/cancel/{busy}")
    wait_until(lambda: status(a, busy) == "cancelled")
