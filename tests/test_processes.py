"""``technic serve --processes N``: N fleet members behind one port, one worker budget."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.live_server import OUTPUT, Server, fresh_database, server_env, wait_until
from tests.redis_server import running_redis

# long enough to be running on both processes at once (one worker each)
SLOW_SCAN = {"provider": "synthetic", "max_symbols": 60_000, "bars": 530}


def children_of(pid: int) -> list[int]:
    listed = subprocess.run(
        ["ps", "--ppid", str(pid), "-o", "pid=,args="], capture_output=True, text=True
    ).stdout
    return [int(line.split()[0]) for line in listed.splitlines() if "serve" in line]


def test_two_processes_share_the_port_run_scans_side_by_side_and_stop_together(
    pg_server_url: str, tmp_path: Path
) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with running_redis(tmp_path / "redis") as redis, fresh_database(pg_server_url) as database:
        env = server_env(
            database,
            tmp_path / "data",
            REDIS_URL=redis.url,
            MAX_CONCURRENT_SCANS="1",
            MAX_WORKERS="2",
        )
        server = Server(env, OUTPUT / "processes.log", args=("--processes", "2"))
        server.log_path.write_bytes(b"")
        server.start()
        assert server.process is not None
        supervisor = server.process
        try:
            children = children_of(supervisor.pid)
            assert len(children) == 2, server.log()
            # the machine's budget of two workers is split: one each
            assert {server.api("GET", "/health")["workers"] for _ in range(10)} == {1}
            scans = [server.api("POST", "/scan/start", SLOW_SCAN)["scan_id"] for _ in range(2)]

            def both_running() -> bool:
                active = server.api("GET", "/scan/active")["active"]
                running = [s for s in active if s["status"] == "running"]
                return len(running) == 2

            wait_until(both_running, timeout_s=60)
            instances = {s["instance"] for s in server.api("GET", "/scan/active")["active"]}
            assert len(instances) == 2, "one slot each: the two scans run on both processes"
            for scan_id in scans:
                server.api("POST", f"/scan/cancel/{scan_id}")
            wait_until(
                lambda: all(
                    server.api("GET", f"/scan/progress/{s}")["status"] == "cancelled" for s in scans
                ),
                timeout_s=30,
            )
        finally:
            server.stop()
        assert supervisor.returncode == 0, server.log()
        assert all(not Path(f"/proc/{pid}").exists() for pid in children)
