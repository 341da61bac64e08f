"""Where the storage benchmarks run: a throwaway database on a PostgreSQL server.

Not a benchmark itself. The server is the one ``TECHNIC_BENCH_DATABASE_URL``,
``TECHNIC_TEST_DATABASE_URL`` or ``DATABASE_URL`` names, else an embedded one started in a
temporary directory; on it each run makes a database of its own and drops it at the end,
so a benchmark never touches data that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg
from technic.storage import Repository, connect_url
from technic.storage.database import ensure_database, quote_ident
from technic.storage.embedded import EmbeddedPostgres

SERVER_VARIABLES = ("TECHNIC_BENCH_DATABASE_URL", "TECHNIC_TEST_DATABASE_URL", "DATABASE_URL")


@contextlib.asynccontextmanager
async def throwaway_repository(server_url: str, prefix: str) -> AsyncIterator[Repository]:
    """A repository on a new, migrated database named ``prefix_<random>``, dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    url = await ensure_database(server_url, name)
    try:
        database = await connect_url(url, command_timeout_s=900)
        try:
            yield database.repository
        finally:
            await database.close()
    finally:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        finally:
            await conn.close()


def run_on_a_server(bench: Callable[[str], Coroutine[Any, Any, int]]) -> int:
    """Run ``bench(server_url)`` on the named server or an embedded one; its exit status."""
    server_url = next((os.environ[v] for v in SERVER_VARIABLES if os.environ.get(v)), None)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load} (other work on the machine skews timings)")
    if server_url is not None:
        print(f"server: {server_url.split('@')[-1]}")
        return asyncio.run(bench(server_url))
    with tempfile.TemporaryDirectory(prefix="technic-bench-") as tmp:
        embedded = EmbeddedPostgres(Path(tmp) / "postgres")
        embedded.start()
        print(f"server: embedded PostgreSQL (started in {embedded.started_in_s:.2f} s)")
        try:
            return asyncio.run(bench(embedded.url()))
        finally:
            embedded.stop()
