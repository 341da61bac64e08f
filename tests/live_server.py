"""A real ``technic serve`` in a subprocess, for tests that use the service from outside:
the browser tests and the terminal watcher tests.

``Server`` starts ``technic serve`` on a free port in a process group of its own (so its
worker processes stop with it), waits until it answers, and stops it with Ctrl-C or kills
it like a crash would. ``fresh_database`` makes an empty database on the test PostgreSQL
(``pg_server_url`` from ``conftest.py``); the server migrates it when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from technic.storage.database import quote_ident, with_database

OUTPUT = Path(__file__).parent / "output"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A ``technic serve`` subprocess on a free port, with its output in ``log_path``."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=_free_port)
    # more arguments of `technic serve` (e.g. --processes 2)
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        technic = Path(sys.executable).with_name("technic")
        command = [str(technic)] if technic.exists() else [sys.executable, "-m", "cli.main"]
        env = {**self.env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        with self.log_path.open("ab") as log:
            # its own process group, so that its worker processes can be stopped with it
            self.process = subprocess.Popen(
                [*command, "serve", *self.args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._kill_group()
                pytest.fail(f"technic serve exited:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/static/favicon.svg", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.kill()
        pytest.fail(f"technic serve did not answer within 60 s:\n{self.log()}")

    def stop(self) -> None:
        """Ctrl-C, as a person stops it; then nothing of its process group may remain."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._kill_group()

    def kill(self) -> None:
        """Stop it the hard way, as a crash would: no goodbye to the watchers."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self._kill_group()

    def _kill_group(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # workers left behind, if any
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        token = self.env.get("TECHNIC_API_TOKEN")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def start_scan(self, **body: Any) -> str:
        return str(self.api("POST", "/scan/start", body)["scan_id"])


async def _execute(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _run_sql(server_url: str, sql: str) -> None:
    """Run one statement on a private event loop in a worker thread: Playwright's sync API
    keeps its own loop running in the test thread, so no asyncio may run there."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _execute(server_url, sql)).result()


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """An empty database of its own on the test server (``technic serve`` migrates it)."""
    name = f"technic_browser_{uuid.uuid4().hex[:12]}"
    _run_sql(server_url, f"CREATE DATABASE {quote_ident(name)}")
    try:
        yield with_database(server_url, name)
    finally:
        _run_sql(server_url, f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")


def server_env(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    # a developer's own Massive (Polygon.io) key never reaches a test server: a fuzzed
    # polygon scan would spend its quota on the real API
    drop = (
        "TECHNIC_API_TOKEN",
        "PORT",
        "HOST",
        "PYTHONTRACEMALLOC",
        "POLYGON_API_KEY",
        "MASSIVE_API_KEY",
        "POLYGON_BASE_URL",
    )
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        DATABASE_URL=database_url,
        TECHNIC_DATA_DIR=str(data_dir),
        MAX_WORKERS="2",
        MAX_CONCURRENT_SCANS="4",
        LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def running_scans(service: Server) -> set[str]:
    return {scan["scan_id"] for scan in service.api("GET", "/scans?status=running")["scans"]}


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {condition}")
        time.sleep(0.05)


@contextmanager
def running_server(
    pg_server_url: str, data_dir: Path, log_name: str, **env: str
) -> Iterator[Server]:
    """A started server on a fresh database; stopped, and the database dropped, after."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with fresh_database(pg_server_url) as database_url:
        service = Server(server_env(database_url, data_dir, **env), OUTPUT / log_name)
        service.log_path.write_bytes(b"")
        try:
            service.start()
            yield service
        finally:
            service.stop()
