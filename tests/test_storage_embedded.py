"""The embedded PostgreSQL for real: start, migrate, use, stop, restart and find the data,
and a server that stops under a live pool. These boot their own servers in temporary data
directories (about a second each), whatever server the rest of the suite uses."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from uuid import uuid4

import pytest
from technic.config.settings import Settings
from technic.storage import DatabaseUnavailable, connect
from technic.storage.embedded import _prune_dead_pids
from technic.storage.migrate import discover

pytestmark = [pytest.mark.embedded, pytest.mark.asyncio(loop_scope="session")]


def postmaster_running(pgdata: Path) -> bool:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_start_use_stop_restart(tmp_path: Path) -> None:
    settings = Settings(database_url=None, data_dir=tmp_path / "data")
    pgdata = settings.data_dir / "postgres"

    database = await connect(settings)
    try:
        assert database.embedded is not None and database.embedded.started_in_s is not None
        assert database.description == f"embedded PostgreSQL in {pgdata.resolve()}"
        assert database.migration_report is not None
        assert database.migration_report.applied == [m.file for m in await discover()]
        repo = database.repository
        scan = await repo.create_scan(uuid4(), {"max_symbols": 3})
        await repo.transition(scan.id, "running")
        await repo.save_results(scan.id, [{"symbol": "AAPL", "tech_rating": 91.5}])
        await repo.transition(scan.id, "completed")

        # a second handle in the same process shares the server and keeps it up
        second = await connect(settings)
        await second.close()
        assert postmaster_running(pgdata)
        assert await repo.get_scan(scan.id) is not None
    finally:
        await database.close()
    assert not postmaster_running(pgdata)  # stopped when the last handle closed

    again = await connect(settings)
    try:
        assert again.migration_report is not None and again.migration_report.applied == []
        stored = await again.repository.get_scan(scan.id)
        assert stored is not None and stored.status == "completed" and stored.result_count == 1
        page = await again.repository.fetch_results(scan.id)
        assert page is not None and page.rows == [{"symbol": "AAPL", "tech_rating": 91.5}]
    finally:
        await again.close()
    assert not postmaster_running(pgdata)


async def test_server_stopped_mid_use(tmp_path: Path) -> None:
    database = await connect(Settings(database_url=None, data_dir=tmp_path / "data"))
    try:
        repo = database.repository
        scan = await repo.create_scan(uuid4(), {})
        assert database.embedded is not None
        await asyncio.to_thread(database.embedded.stop)  # the server goes away under the pool
        with pytest.raises(DatabaseUnavailable):
            await repo.get_scan(scan.id)
        with pytest.raises(DatabaseUnavailable):
            await repo.transition(scan.id, "running")
        with pytest.raises(DatabaseUnavailable):
            await database.ping(timeout_s=1)
    finally:
        await database.close()


async def test_dead_pids_are_pruned(tmp_path: Path) -> None:
    handles = tmp_path / ".handle_pids.json"
    dead = 2**22 + 12345  # above the default pid_max: never a live process
    handles.write_text(json.dumps([os.getpid(), dead, 1]))
    _prune_dead_pids(handles)
    assert json.loads(handles.read_text()) == [os.getpid(), 1]
    _prune_dead_pids(tmp_path / "absent.json")  # nothing to do
