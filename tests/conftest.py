"""Shared test fixtures. This part: PostgreSQL databases for storage and server tests.

Which server: ``TECHNIC_TEST_DATABASE_URL`` when set (CI sets
``postgresql://postgres@127.0.0.1:5432/postgres``; the URL must name a database the user can
connect to and must allow CREATE DATABASE). Otherwise the embedded PostgreSQL from the
pgserver wheel is booted once per session in a temporary directory, so the suite passes on a
machine with no PostgreSQL installed. ``DATABASE_URL`` is deliberately ignored: tests create
and drop databases, which must never happen on the service's own server by accident.

Fixtures (every database is created on that server with a unique name and dropped after):

``pg_server_url`` (session, str)
    URL of the server's maintenance database; use it only to create databases.
``database_url`` (function, str)
    A fresh database of its own for one test, with every migration applied.
``empty_database_url`` (function, str)
    A fresh database with nothing applied (for migration tests).
``database`` (function, ``storage.Database``)
    A pool on ``database_url``; closed after the test.
``repository`` (function, ``storage.Repository``)
    ``database.repository``: the usual way in for a test that needs storage.
``module_database_url`` (module, str)
    One migrated database shared by a test module.
``module_repository`` (function, ``storage.Repository``)
    A repository on ``module_database_url`` whose tables are emptied before each test:
    isolation at a fraction of the cost of a database per test (~0.4 s each on CI).

Async fixtures here run on the session event loop (``loop_scope="session"``), so the tests
that use a pool from them must too: mark them ``pytest.mark.asyncio(loop_scope="session")``
(or set ``asyncio_default_test_loop_scope = "session"``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from technic.storage import Database, Repository, connect_url
from technic.storage.database import quote_ident, with_database
from technic.storage.embedded import EmbeddedPostgres
from technic.storage.migrate import migrate

TEST_DATABASE_ENV = "TECHNIC_TEST_DATABASE_URL"


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get(TEST_DATABASE_ENV, "").strip()
    if url:
        yield url
        return
    embedded = EmbeddedPostgres(Path(tmp_path_factory.mktemp("pgserver")) / "postgres")
    embedded.start()
    try:
        yield embedded.url("postgres")
    finally:
        embedded.stop()


async def _create_database(server_url: str, *, template: str | None = None) -> str:
    name = f"technic_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server_url)
    try:
        sql = f"CREATE DATABASE {quote_ident(name)}"
        if template is not None:
            sql += f" TEMPLATE {quote_ident(template)}"
        await conn.execute(sql)
    finally:
        await conn.close()
    return name


async def _drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def _migrated_template(pg_server_url: str) -> AsyncIterator[str]:
    """A migrated database that fresh test databases are cloned from (faster than migrating)."""
    name = await _create_database(pg_server_url)
    try:
        conn = await asyncpg.connect(with_database(pg_server_url, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield name
    finally:
        await _drop_database(pg_server_url, name)


@pytest_asyncio.fixture(loop_scope="session")
async def database_url(pg_server_url: str, _migrated_template: str) -> AsyncIterator[str]:
    name = await _create_database(pg_server_url, template=_migrated_template)
    try:
        yield with_database(pg_server_url, name)
    finally:
        await _drop_database(pg_server_url, name)


@pytest_asyncio.fixture(loop_scope="session")
async def empty_database_url(pg_server_url: str) -> AsyncIterator[str]:
    name = await _create_database(pg_server_url)
    try:
        yield with_database(pg_server_url, name)
    finally:
        await _drop_database(pg_server_url, name)


@pytest_asyncio.fixture(loop_scope="session")
async def database(database_url: str) -> AsyncIterator[Database]:
    db = await connect_url(database_url, migrate=False, max_size=4)
    try:
        yield db
    finally:
        await db.close()


@pytest_asyncio.fixture(loop_scope="session")
async def repository(database: Database) -> Repository:
    return database.repository


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def module_database_url(pg_server_url: str, _migrated_template: str) -> AsyncIterator[str]:
    name = await _create_database(pg_server_url, template=_migrated_template)
    try:
        yield with_database(pg_server_url, name)
    finally:
        await _drop_database(pg_server_url, name)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def _module_database(module_database_url: str) -> AsyncIterator[Database]:
    db = await connect_url(module_database_url, migrate=False, max_size=4)
    try:
        yield db
    finally:
        await db.close()


@pytest_asyncio.fixture(loop_scope="session")
async def module_repository(_module_database: Database) -> Repository:
    # Deleting scans empties every table: stage timings and failures cascade through their
    # foreign keys, results through the trigger that stands in for one.
    await _module_database.pool.execute("DELETE FROM scans")
    return _module_database.repository
