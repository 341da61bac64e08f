"""The worker pool: it dies with whoever started it, and survives a killed worker.

Real processes throughout: ``technic serve`` and ``technic scan`` as subprocesses, killed
with SIGKILL the way the OOM killer or ``kill -9`` would, and a real ``WorkerPool``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from technic.engine.workers import WorkerPool

from tests.live_server import running_server, wait_until
from tests.processes import alive, cmdline, descendants, wait_gone

ROOT = Path(__file__).resolve().parents[1]
SLOW_SCAN = ["--provider", "synthetic", "--symbols", "30000", "--bars", "300"]
GONE_WITHIN_S = 5.0


def _pool_processes(pid: int, workers: int) -> set[int]:
    """The forkserver, its workers and the resource tracker under ``pid``, once all are up."""
    found: set[int] = set()

    def complete() -> bool:
        nonlocal found
        found = descendants(pid)
        return sum("forkserver" in cmdline(p) for p in found) >= workers + 1

    wait_until(complete, timeout_s=60)
    return found


def test_killing_technic_serve_leaves_no_process_behind(pg_server_url: str, tmp_path: Path) -> None:
    with running_server(pg_server_url, tmp_path / "data", "workers-serve.log") as service:
        assert service.process is not None
        server_pid = service.process.pid
        service.start_scan(provider="synthetic", max_symbols=60_000, bars=300)
        left = _pool_processes(server_pid, workers=2)
        assert any("resource_tracker" in cmdline(p) for p in left), left
        os.kill(server_pid, signal.SIGKILL)
        service.process.wait()
        assert wait_gone(left, GONE_WITHIN_S) == set(), [cmdline(p) for p in left if alive(p)]


def test_killing_technic_scan_leaves_no_process_behind(tmp_path: Path) -> None:
    env = {**os.environ, "TECHNIC_DATA_DIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "technic.cli", "scan", "--workers", "2", *SLOW_SCAN],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert process.stderr is not None
        seen = ""
        deadline = time.monotonic() + 60
        while "Starting stage: symbol_scanning" not in seen and time.monotonic() < deadline:
            seen += process.stderr.readline()
        left = _pool_processes(process.pid, workers=2)
        process.kill()
        process.wait()
        assert wait_gone(left, GONE_WITHIN_S) == set(), [cmdline(p) for p in left if alive(p)]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def test_submit_from_many_threads_while_a_worker_is_killed() -> None:
    """Every scan thread submits to the shared pool; a killed worker breaks it, and exactly
    one fresh pool must replace it, with no thread seeing anything but its own lost task."""
    pool = WorkerPool(2)
    stop = threading.Event()
    unexpected: list[BaseException] = []
    lost = 0
    done = 0
    lock = threading.Lock()

    def hammer() -> None:
        nonlocal lost, done
        while not stop.is_set():
            try:
                future: Future[None] = pool.submit(time.sleep, 0.002)
            except BaseException as error:
                unexpected.append(error)
                return
            try:
                future.result(timeout=30)
            except BrokenProcessPool:
                with lock:
                    lost += 1
            else:
                with lock:
                    done += 1

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: done > 50, timeout_s=60)
        os.kill(pool.worker_pids()[0], signal.SIGKILL)
        wait_until(lambda: lost > 0 and done > 200, timeout_s=60)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert unexpected == []
        assert pool.rebuilds == 1
        assert pool.submit(pow, 2, 10).result(timeout=30) == 1024
        pids = pool.worker_pids()
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
