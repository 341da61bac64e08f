"""A database that is down, unreachable, silent or killed mid-use: one exception type, and
nothing half-written."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from technic.config.settings import Settings
from technic.storage import (
    Database,
    DatabaseUnavailable,
    Repository,
    StorageError,
    connect,
    connect_url,
)
from technic.storage.database import with_database

pytestmark = pytest.mark.asyncio(loop_scope="session")

CLOSED_PORT_URL = "postgresql://postgres:s3cret@127.0.0.1:1/postgres"


async def test_closed_port_is_unavailable() -> None:
    began = time.perf_counter()
    with pytest.raises(DatabaseUnavailable) as caught:
        await connect_url(CLOSED_PORT_URL, connect_timeout_s=5)
    assert time.perf_counter() - began < 5
    assert "s3cret" not in str(caught.value) and "127.0.0.1:1" in str(caught.value)
    assert isinstance(caught.value, StorageError)
    assert isinstance(caught.value.__cause__, OSError)


async def test_settings_with_closed_port_is_unavailable(tmp_path: Path) -> None:
    settings = Settings(database_url=CLOSED_PORT_URL, data_dir=tmp_path)
    with pytest.raises(DatabaseUnavailable):
        await connect(settings)
    assert not (tmp_path / "postgres").exists()  # no embedded server when a URL is given


async def test_silent_server_times_out() -> None:
    # accepts TCP connections and never says a word, like a hung or firewalled server
    writers: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda r, w: writers.append(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        began = time.perf_counter()
        with pytest.raises(DatabaseUnavailable, match=r"no answer within 0\.3 s"):
            await connect_url(f"postgresql://postgres@127.0.0.1:{port}/x", connect_timeout_s=0.3)
        assert time.perf_counter() - began < 3
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_missing_database_is_unavailable(pg_server_url: str) -> None:
    url = with_database(pg_server_url, f"technic_missing_{uuid4().hex[:8]}")
    with pytest.raises(DatabaseUnavailable, match="does not exist"):
        await connect_url(url)


async def test_malformed_url_is_unavailable() -> None:
    with pytest.raises(DatabaseUnavailable):
        await connect_url("postgresql://postgres@127.0.0.1:notaport/x")


async def test_closed_pool_is_unavailable(database_url: str) -> None:
    database = await connect_url(database_url, migrate=False)
    await database.ping()
    await database.close()
    await database.close()  # idempotent
    with pytest.raises(DatabaseUnavailable):
        await database.repository.get_scan(uuid4())
    with pytest.raises(DatabaseUnavailable):
        await database.ping()


async def terminate_backends(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()


async def test_killed_connections_are_unavailable_then_recover(
    database_url: str, database: Database
) -> None:
    repo = database.repository
    scan = await repo.create_scan(uuid4(), {})
    assert await terminate_backends(database_url) >= 1
    with contextlib.suppress(DatabaseUnavailable):  # if the pool learns of the kill only on use
        await repo.get_scan(scan.id)
    stored = await repo.get_scan(scan.id)  # the pool replaces dead connections
    assert stored is not None and stored.id == scan.id


class KillHalfway(Sequence[dict[str, Any]]):
    """Result rows whose reading kills the database session halfway through the COPY."""

    def __init__(self, rows: list[dict[str, Any]], database_url: str) -> None:
        self.rows, self.url, self.killed = rows, database_url, False

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> Any:
        if index == len(self.rows) // 2 and not self.killed:
            self.killed = True
            worker = threading.Thread(target=asyncio.run, args=(terminate_backends(self.url),))
            worker.start()
            worker.join()
            time.sleep(0.2)  # let the server close the session before we write on
        return self.rows[index]


async def test_session_killed_mid_save_leaves_nothing(
    database_url: str, database: Database
) -> None:
    repo: Repository = database.repository
    scan = await repo.create_scan(uuid4(), {})
    rows = [
        {"symbol": f"S{i}", "tech_rating": 100 - i / 100, "close": 1.0, "blob": "x" * 2000}
        for i in range(6000)
    ]
    doomed = KillHalfway(rows, database_url)
    with pytest.raises(DatabaseUnavailable):
        await repo.save_results(scan.id, doomed)
    assert doomed.killed
    page = await repo.fetch_results(scan.id)
    assert page is not None and page.total == 0 and page.rows == []
    stored = await repo.get_scan(scan.id)
    assert stored is not None and stored.result_count == 0
