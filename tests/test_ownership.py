"""Several ``technic serve`` on one database: a server interrupts only the scans of a dead one.

Real servers (subprocesses), one real database and one data directory shared by both, as
two instances behind a load balancer would run. Heartbeats are shortened to 1 s. (A server
on another machine, known only by its heartbeats, is in test_server.py.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.live_server import OUTPUT, Server, fresh_database, server_env, wait_until

HEARTBEAT_S = 1
# a scan that outlives several heartbeat timeouts even on a quiet machine: as many cells as
# MAX_SCAN_CELLS allows, on one worker (a 60,000 x 300 scan on two took 3.3 s: too short)
SLOW_SCAN = {"provider": "synthetic", "max_symbols": 60_000, "bars": 530}


@contextmanager
def two_servers(
    pg_server_url: str, data_dir: Path, name: str, timeout_s: int
) -> Iterator[list[Server]]:
    """Two servers on one fresh database and one data directory, neither started yet."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with fresh_database(pg_server_url) as database_url, ExitStack() as stack:
        env = server_env(
            database_url,
            data_dir,
            OWNER_HEARTBEAT_S=str(HEARTBEAT_S),
            OWNER_TIMEOUT_S=str(timeout_s),
            MAX_WORKERS="1",
        )
        servers = []
        for index in (1, 2):
            server = Server(env, OUTPUT / f"{name}-{index}.log")
            server.log_path.write_bytes(b"")
            stack.callback(server.stop)
            servers.append(server)
        yield servers


def stored(server: Server, scan_id: str) -> dict:
    """The scan as the database has it (``/scans`` reads only the database)."""
    scans = server.api("GET", "/scans?limit=50")["scans"]
    return next((scan for scan in scans if scan["scan_id"] == scan_id), {"status": None})


def stored_status(server: Server, scan_id: str) -> str | None:
    return stored(server, scan_id)["status"]


def test_a_second_server_leaves_the_first_ones_running_scan_alone(
    pg_server_url: str, tmp_path: Path
) -> None:
    """With a 3 s timeout, the first server's heartbeats keep its scan alive in the eyes of
    the second for the whole (longer) scan."""
    timeout_s = 3
    with two_servers(pg_server_url, tmp_path / "data", "owners-second", timeout_s) as (
        first,
        second,
    ):
        first.start()
        scan_id = first.start_scan(**SLOW_SCAN)
        wait_until(lambda: stored_status(first, scan_id) == "running")
        second.start()
        started = time.monotonic()
        progress = f"/scan/progress/{scan_id}"
        wait_until(lambda: first.api("GET", progress)["status"] == "completed", timeout_s=120)
        assert time.monotonic() - started > timeout_s + HEARTBEAT_S, "scan too short to tell"
        wait_until(lambda: stored_status(second, scan_id) != "running", timeout_s=30)
        record = stored(second, scan_id)
        assert (record["status"], record["result_count"]) == ("completed", 60_000)
        assert "IllegalTransition" not in first.log()
        assert "interrupted" not in first.log() + second.log()


def test_a_killed_servers_running_scan_is_interrupted_by_a_live_server(
    pg_server_url: str, tmp_path: Path
) -> None:
    """On one machine a dead pid is proof enough: the scan is interrupted at the next
    heartbeat, long before the (here 60 s) timeout that servers elsewhere rely on."""
    with two_servers(pg_server_url, tmp_path / "data", "owners-killed", 60) as (first, second):
        first.start()
        second.start()
        scan_id = first.start_scan(**SLOW_SCAN)
        wait_until(lambda: stored_status(second, scan_id) == "running")
        first.kill()
        killed = time.monotonic()
        wait_until(lambda: stored_status(second, scan_id) == "interrupted", timeout_s=30)
        assert time.monotonic() - killed < HEARTBEAT_S + 2
        assert "interrupted" in stored(second, scan_id)["error"]


@pytest.mark.parametrize("value", ["0", "x"])
def test_bad_heartbeat_settings_stop_start_up(value: str) -> None:
    from technic.config import Settings, SettingsError

    with pytest.raises(SettingsError, match="OWNER_HEARTBEAT_S"):
        Settings.from_env({"OWNER_HEARTBEAT_S": value})
    with pytest.raises(SettingsError, match="OWNER_TIMEOUT_S"):
        Settings.from_env({"OWNER_HEARTBEAT_S": "5", "OWNER_TIMEOUT_S": "9"})
