"""Where the database comes from, and the object that owns the connection pool.

``connect(settings)`` is the one entry point for the server and the CLI:

- ``settings.database_url`` set: a pool on that server.
- unset: the embedded PostgreSQL in ``settings.data_dir / "postgres"`` is started (or
  attached to) first, and its ``technic`` database is created if missing.

Either way the migrations are applied before the pool is handed out (unless ``migrate=False``),
so code holding a ``Database`` can rely on the schema. ``Database.close()`` closes the pool and
detaches from the embedded server, which stops it when no other process uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
from technic.config.settings import Settings
from technic.storage._pg import init_connection, redact_url, translate_errors
from technic.storage.embedded import EmbeddedPostgres
from technic.storage.errors import DatabaseUnavailable
from technic.storage.migrate import migrate as run_migrations
from technic.storage.models import MigrationReport
from technic.storage.repository import Repository

logger = logging.getLogger(__name__)

EMBEDDED_DATABASE = "technic"


class Database:
    """Owns the asyncpg pool (and the embedded server, when one was started for it)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        url: str,
        *,
        embedded: EmbeddedPostgres | None = None,
        migrations_dir: Path | None = None,
    ) -> None:
        self.pool = pool
        self.url = url
        self.embedded = embedded
        self.repository = Repository(pool)
        self.migration_report: MigrationReport | None = None
        self._migrations_dir = migrations_dir
        self._closed = False

    @property
    def description(self) -> str:
        """Where the data lives, for start-up logs and CLI output (no password)."""
        if self.embedded is not None:
            return f"embedded PostgreSQL in {self.embedded.pgdata}"
        return redact_url(self.url)

    async def ping(self, *, timeout_s: float = 2.0) -> None:
        """One round trip, for health checks; raises ``DatabaseUnavailable`` if it fails.

        Bounded by ``timeout_s`` so that a hung server makes /health answer "down" quickly
        instead of hanging with it.
        """
        with translate_errors("ping"):
            try:
                await self.pool.fetchval("SELECT 1", timeout=timeout_s)
            except TimeoutError as e:
                raise DatabaseUnavailable(f"ping: no answer within {timeout_s:g} s") from e

    async def migrate(self) -> MigrationReport:
        """Apply pending migrations (see ``storage.migrate``) and remember the report."""
        with translate_errors("migrate"):
            async with self.pool.acquire() as conn:
                self.migration_report = await run_migrations(conn, self._migrations_dir)
        return self.migration_report

    async def close(self, *, timeout_s: float = 10.0) -> None:
        """Close the pool, then detach from the embedded server. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self.pool.close(), timeout_s)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            logger.warning("pool did not close cleanly (%s); terminating it", e)
            self.pool.terminate()
        finally:
            if self.embedded is not None:
                await asyncio.to_thread(self.embedded.stop)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def connect(
    settings: Settings,
    *,
    migrate: bool = True,
    migrations_dir: Path | None = None,
    min_size: int = 1,
    max_size: int = 10,
    connect_timeout_s: float = 10.0,
    command_timeout_s: float = 60.0,
) -> Database:
    """Open the database the settings name, starting the embedded one when none is named.

    Raises ``DatabaseUnavailable`` when it cannot be reached (or the embedded server does not
    start) and ``MigrationError`` when a migration fails.
    """
    if settings.database_url is not None:
        return await connect_url(
            settings.database_url,
            migrate=migrate,
            migrations_dir=migrations_dir,
            min_size=min_size,
            max_size=max_size,
            connect_timeout_s=connect_timeout_s,
            command_timeout_s=command_timeout_s,
        )
    embedded = EmbeddedPostgres(settings.data_dir / "postgres")
    await asyncio.to_thread(embedded.start)
    try:
        url = await ensure_database(embedded.url("postgres"), EMBEDDED_DATABASE)
        return await connect_url(
            url,
            embedded=embedded,
            migrate=migrate,
            migrations_dir=migrations_dir,
            min_size=min_size,
            max_size=max_size,
            connect_timeout_s=connect_timeout_s,
            command_timeout_s=command_timeout_s,
        )
    except BaseException:
        await asyncio.to_thread(embedded.stop)
        raise


async def connect_url(
    url: str,
    *,
    embedded: EmbeddedPostgres | None = None,
    migrate: bool = True,
    migrations_dir: Path | None = None,
    min_size: int = 1,
    max_size: int = 10,
    connect_timeout_s: float = 10.0,
    command_timeout_s: float = 60.0,
) -> Database:
    """Open a pool on ``url`` (and migrate). ``embedded`` is stopped by ``Database.close``."""
    with translate_errors(f"connect to {redact_url(url)}"):
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                init=init_connection,
                timeout=connect_timeout_s,
                command_timeout=command_timeout_s,
            )
        except TimeoutError as e:
            raise DatabaseUnavailable(
                f"connect to {redact_url(url)}: no answer within {connect_timeout_s:g} s"
            ) from e
        except ValueError as e:  # asyncpg's complaint about a malformed URL
            raise DatabaseUnavailable(f"connect: unusable database URL: {e}") from e
    database = Database(pool, url, embedded=embedded, migrations_dir=migrations_dir)
    if migrate:
        try:
            await database.migrate()
        except BaseException:
            await database.close()
            raise
    return database


async def ensure_database(server_url: str, name: str, *, timeout_s: float = 10.0) -> str:
    """Create database ``name`` on the server unless it exists; return its URL.

    ``name`` comes from code, never from users, but is still quoted as an identifier.
    """
    with translate_errors(f"create database {name}"):
        conn = await asyncpg.connect(server_url, timeout=timeout_s)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                # another process may create it between our check and our create
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
        finally:
            await conn.close()
    return with_database(server_url, name)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server (query string kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(database, safe="")))
