"""A real ``technic serve`` for the service benchmarks. Not a benchmark itself.

Each run gets a fresh data directory (so an embedded PostgreSQL of its own, unless the
environment names ``DATABASE_URL``), a free loopback port and quiet logs; the server is
stopped when the ``with`` block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
STOP_TIMEOUT_S = 60
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serve(extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """A ``technic serve`` with a fresh data directory; yields its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="technic-bench-") as data_dir:
        env = {
            **os.environ,
            "PORT": str(port),
            "TECHNIC_DATA_DIR": data_dir,
            "LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "technic.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()
            server.wait(timeout=STOP_TIMEOUT_S)


async def wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    """Until the server answers /health (its database migrated, its workers started)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{url}/health") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise SystemExit("the server did not start")
