"""Apply ``migrations/NNNN_name.sql`` files in order, each once, each in its own transaction.

Why it works this way:

- A session advisory lock serialises runners: two servers starting together both call
  ``migrate``; the second waits, then finds every file recorded and applies nothing.
- Each file's statements are sent one at a time inside the file's transaction, so a failure
  names the file and the line of the failing statement (or of the exact error position when
  PostgreSQL reports one), and the rollback leaves the schema as it was before that file.
- ``schema_migrations`` keeps a checksum of every applied file; editing a file after it was
  applied is refused rather than silently ignored, since the database would no longer match.

Statements that PostgreSQL refuses to run inside a transaction (``CREATE INDEX
CONCURRENTLY``, ``VACUUM``) cannot be used in migration files.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import aiofiles
import asyncpg
from technic import migrations
from technic.storage._pg import describe, is_unavailable, translate_errors
from technic.storage.errors import DatabaseUnavailable, MigrationError
from technic.storage.models import MigrationReport

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = migrations.DIRECTORY
# Any 64-bit constant works; this one is the first 8 bytes of sha256("technic.migrations").
ADVISORY_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"technic.migrations").digest()[:8], "big", signed=True
)

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_s  double precision NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    file: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Statement:
    """One SQL statement of a file: its text and the 1-based line it starts on."""

    text: str
    line: int


async def discover(migrations_dir: Path | None = None) -> list[Migration]:
    """The migration files of a directory in version order; other files are ignored.

    Read through aiofiles: this runs on the server's event loop at start-up, where a slow
    disk must not stall the health check or the first watchers.
    """
    directory = MIGRATIONS_DIR if migrations_dir is None else migrations_dir
    if not directory.is_dir():
        raise MigrationError(str(directory), None, "migrations directory does not exist")
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(path.name, None, "name must look like 0001_lowercase_words.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                path.name, None, f"version {version} also used by {found[version].file}"
            )
        async with aiofiles.open(path, encoding="utf-8") as file:
            text = await file.read()
        found[version] = Migration(version, path.name, path, text)
    return [found[v] for v in sorted(found)]


def split_statements(sql: str) -> list[Statement]:
    """Split SQL text on top-level semicolons, skipping quotes, comments and dollar quotes.

    Each statement's text starts at its first significant character, so an error position
    reported by PostgreSQL maps back to a line of the file.
    """
    statements: list[Statement] = []
    i, n = 0, len(sql)
    start: int | None = None  # offset of the current statement's first significant character

    def line_of(offset: int) -> int:
        return sql.count("\n", 0, offset) + 1

    while i < n:
        ch = sql[i]
        if ch in " \t\r\n\f":
            i += 1
            continue
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
            continue
        if start is None:
            start = i
        if ch == ";":
            text = sql[start:i].strip()
            if text:  # empty for a stray ";"
                statements.append(Statement(text, line_of(start)))
            start = None
            i += 1
        elif ch == "'":
            escaped = i > 0 and sql[i - 1] in "eE" and (i < 2 or not sql[i - 2].isalnum())
            i = _skip_quoted(sql, i, "'", backslash=escaped)
        elif ch == '"':
            i = _skip_quoted(sql, i, '"', backslash=False)
        elif ch == "$" and (tag := _DOLLAR_TAG.match(sql, i)) and not _in_identifier(sql, i):
            end = sql.find(tag.group(0), tag.end())
            i = n if end < 0 else end + len(tag.group(0))
        else:
            i += 1
    if start is not None and sql[start:].strip():
        statements.append(Statement(sql[start:].strip(), line_of(start)))
    return statements


def _in_identifier(sql: str, i: int) -> bool:
    # "$1" parameters and names like a$b are not dollar quotes
    return i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_")


def _skip_block_comment(sql: str, i: int) -> int:
    depth = 0  # PostgreSQL block comments nest
    while i < len(sql):
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return i


def _skip_quoted(sql: str, i: int, quote: str, *, backslash: bool) -> int:
    i += 1
    while i < len(sql):
        ch = sql[i]
        if backslash and ch == "\\":
            i += 2
        elif ch == quote:
            if sql.startswith(quote * 2, i):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return i


async def migrate(
    conn: asyncpg.Connection,
    migrations_dir: Path | None = None,
    *,
    lock_timeout_s: float = 120.0,
) -> MigrationReport:
    """Apply every pending migration over ``conn``; safe to call from many processes at once.

    Raises ``MigrationError`` naming the file (and line) that failed, after rolling that file
    back; files applied before it stay applied. Raises ``DatabaseUnavailable`` when the
    connection fails or the lock is not obtained within ``lock_timeout_s``.
    """
    migrations = await discover(migrations_dir)
    started = time.perf_counter()
    with translate_errors("migrate"):
        try:
            await conn.execute(
                "SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY, timeout=lock_timeout_s
            )
        except TimeoutError as e:
            raise DatabaseUnavailable(
                f"migrate: another migration runner held the lock for over {lock_timeout_s:g} s"
            ) from e
        try:
            await conn.execute(_BOOTSTRAP)
            rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
            recorded = {r["version"]: r for r in rows}
            applied: list[str] = []
            already: list[str] = []
            for migration in migrations:
                row = recorded.pop(migration.version, None)
                if row is None:
                    await _apply(conn, migration)
                    applied.append(migration.file)
                elif row["checksum"] != migration.checksum:
                    raise MigrationError(
                        migration.file,
                        None,
                        "file changed after it was applied; add a new migration instead",
                    )
                else:
                    already.append(migration.file)
            for version, row in sorted(recorded.items()):
                logger.warning(
                    "database has migration %04d (%s) that this code does not know",
                    version,
                    row["name"],
                )
        finally:
            await _unlock(conn)
    return MigrationReport(applied, already, time.perf_counter() - started)


async def _unlock(conn: asyncpg.Connection) -> None:
    # Closing the session releases the lock too, so a failure here must not hide the error
    # that got us here.
    if conn.is_closed():
        return
    try:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as e:
        logger.warning("could not release the migration lock: %s", describe(e))


async def _apply(conn: asyncpg.Connection, migration: Migration) -> None:
    statements = split_statements(migration.sql)
    began = time.perf_counter()
    try:
        async with conn.transaction():
            for statement in statements:
                try:
                    await conn.execute(statement.text)
                except Exception as e:
                    if is_unavailable(e):
                        raise
                    raise MigrationError(
                        migration.file, _error_line(statement, e), describe(e)
                    ) from e
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum, duration_s)"
                " VALUES ($1, $2, $3, $4)",
                migration.version,
                migration.file,
                migration.checksum,
                time.perf_counter() - began,
            )
    except MigrationError:
        logger.error("migration %s failed and was rolled back", migration.file)
        raise
    logger.info("applied migration %s in %.3f s", migration.file, time.perf_counter() - began)


def _error_line(statement: Statement, exc: BaseException) -> int:
    position = getattr(exc, "position", None)
    try:
        offset = int(position) - 1 if position else -1
    except (TypeError, ValueError):
        offset = -1
    if 0 <= offset <= len(statement.text):
        return statement.line + statement.text.count("\n", 0, offset)
    return statement.line
