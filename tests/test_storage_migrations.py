"""The migration runner: fresh, repeated, concurrent and failing runs, and the SQL splitter."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from technic.storage import DatabaseUnavailable, MigrationError, connect_url
from technic.storage.migrate import ADVISORY_LOCK_KEY, discover, migrate, split_statements

pytestmark = pytest.mark.asyncio(loop_scope="session")

TABLES = {
    "scans",
    "stage_timings",
    "scan_results",
    "scan_failures",
    "scan_owners",
    "eta_checkpoints",
    "stage_timing_rollup",
    "schema_migrations",
}


async def schema_of(conn: asyncpg.Connection) -> list[tuple[str, str, str]]:
    rows = await conn.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'public' ORDER BY 1, 2"
    )
    return [tuple(r) for r in rows]


async def tables_of(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


async def test_fresh_then_repeated(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        first = await migrate(conn)
        assert first.applied == [p.file for p in await discover()] and first.already_applied == []
        assert first.applied[0] == "0001_initial.sql"
        assert await tables_of(conn) == TABLES
        schema = await schema_of(conn)
        recorded = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY 1")
        assert [r["name"] for r in recorded] == first.applied

        again = await migrate(conn)
        assert again.applied == [] and again.already_applied == first.applied
        assert await schema_of(conn) == schema
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(first.applied)
    finally:
        await conn.close()


async def test_scans_stored_before_eta_accuracy_simply_lack_it(
    empty_database_url: str, tmp_path: Path
) -> None:
    """0003 on a database with history: the old scans keep everything they had, have no
    accuracy, and are neither history for the priors nor counted in the statistics."""
    shipped = await discover()
    before = write(tmp_path / "before", {m.file: m.sql for m in shipped if m.version < 3})
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn, before)
        old = await conn.fetchval(
            "INSERT INTO scans (id, status, config, started_at, finished_at, universe_size)"
            " VALUES (gen_random_uuid(), 'completed', '{\"provider\": \"sample\"}',"
            " now(), now(), 300) RETURNING id"
        )
        through_3 = {m.file: m.sql for m in shipped if m.version <= 3}
        report = await migrate(conn, write(tmp_path / "through-3", through_3))
        assert report.applied == ["0003_eta_accuracy.sql"]
        row = await conn.fetchrow(
            "SELECT status, universe_size, eta_kind, cache_hit_ratio, time_linearity,"
            " overall_linearity, time_stall_s, overall_stall_s FROM scans WHERE id = $1",
            old,
        )
        assert (row["status"], row["universe_size"]) == ("completed", 300)
        assert [row[k] for k in list(row.keys())[2:]] == [None] * 6
        assert await conn.fetchval("SELECT count(*) FROM eta_checkpoints") == 0
    finally:
        await conn.close()
    database = await connect_url(empty_database_url, migrate=False)
    try:
        assert await database.repository.eta_history("sample") == {}
        stats = await database.repository.accuracy_stats(datetime.now(UTC) - timedelta(days=1))
        assert stats.groups == [] and stats.recent == []
    finally:
        await database.close()


async def test_concurrent_runners_apply_once(empty_database_url: str, tmp_path: Path) -> None:
    # the first file sleeps so that both runners are certainly in flight together
    migrations = write(
        tmp_path / "m",
        {
            "0001_slow.sql": "SELECT pg_sleep(0.5);\nCREATE TABLE once (id int PRIMARY KEY);",
            "0002_more.sql": "INSERT INTO once VALUES (1);",
        },
    )
    conns = [await asyncpg.connect(empty_database_url) for _ in range(3)]
    try:
        reports = await asyncio.gather(*(migrate(c, migrations) for c in conns))
        applied = [r.applied for r in reports]
        assert sorted(applied, key=len) == [[], [], ["0001_slow.sql", "0002_more.sql"]]
        assert all(
            r.already_applied == ["0001_slow.sql", "0002_more.sql"]
            for r in reports
            if not r.applied
        )
        assert await conns[0].fetchval("SELECT count(*) FROM once") == 1
    finally:
        for c in conns:
            await c.close()


async def test_failing_migration_rolls_back_and_names_the_line(
    empty_database_url: str, tmp_path: Path
) -> None:
    migrations = write(
        tmp_path / "m",
        {
            "0001_good.sql": "CREATE TABLE good (id int);\n",
            "0002_broken.sql": (
                "-- adds two tables; the second statement is broken\n"
                "CREATE TABLE half (id int);\n"
                "\n"
                "CREATE TABLE broken (\n"
                "    id int,\n"
                "    name text NOT NUL\n"
                ");\n"
            ),
            "0003_never.sql": "CREATE TABLE never (id int);\n",
        },
    )
    conn = await asyncpg.connect(empty_database_url)
    try:
        with pytest.raises(MigrationError) as caught:
            await migrate(conn, migrations)
        error = caught.value
        assert error.file == "0002_broken.sql" and error.line == 6
        assert "0002_broken.sql line 6" in str(error) and "syntax error" in str(error)
        assert await tables_of(conn) == {"good", "schema_migrations"}  # 'half' rolled back
        names = await conn.fetch("SELECT name FROM schema_migrations")
        assert [r["name"] for r in names] == ["0001_good.sql"]

        # fixed, it applies, and the files before it are not applied twice
        (migrations / "0002_broken.sql").write_text("CREATE TABLE half (id int);\n")
        report = await migrate(conn, migrations)
        assert report.applied == ["0002_broken.sql", "0003_never.sql"]
        assert report.already_applied == ["0001_good.sql"]
    finally:
        await conn.close()


async def test_runtime_error_names_the_statement_line(
    empty_database_url: str, tmp_path: Path
) -> None:
    migrations = write(
        tmp_path / "m",
        {
            "0001_divide.sql": (
                "CREATE TABLE t (x int);\nINSERT INTO t VALUES (1);\n\nSELECT 1 / 0;\n"
            )
        },
    )
    conn = await asyncpg.connect(empty_database_url)
    try:
        with pytest.raises(MigrationError) as caught:
            await migrate(conn, migrations)
        assert (caught.value.file, caught.value.line) == ("0001_divide.sql", 4)
        assert "division by zero" in caught.value.message
        assert await tables_of(conn) == {"schema_migrations"}
    finally:
        await conn.close()


async def test_changed_file_is_refused(empty_database_url: str, tmp_path: Path) -> None:
    migrations = write(tmp_path / "m", {"0001_a.sql": "CREATE TABLE a (id int);"})
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn, migrations)
        (migrations / "0001_a.sql").write_text("CREATE TABLE a (id bigint);")
        with pytest.raises(MigrationError, match="changed after it was applied") as caught:
            await migrate(conn, migrations)
        assert caught.value.file == "0001_a.sql"
    finally:
        await conn.close()


async def test_lock_wait_is_bounded(empty_database_url: str) -> None:
    holder = await asyncpg.connect(empty_database_url)
    runner = await asyncpg.connect(empty_database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        with pytest.raises(DatabaseUnavailable, match="held the lock"):
            await migrate(runner, lock_timeout_s=0.3)
        await holder.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
        assert (await migrate(runner)).applied  # the cancelled wait left it usable
    finally:
        await holder.close()
        await runner.close()


async def test_discover_checks_names(tmp_path: Path) -> None:
    ok = write(tmp_path / "ok", {"0002_b.sql": "", "0001_a.sql": "", "README.md": "notes"})
    assert [m.file for m in await discover(ok)] == ["0001_a.sql", "0002_b.sql"]
    with pytest.raises(MigrationError, match="0001_lowercase_words"):
        await discover(write(tmp_path / "bad", {"1_init.sql": ""}))
    with pytest.raises(MigrationError, match="also used by"):
        await discover(write(tmp_path / "dup", {"0001_a.sql": "", "0001_b.sql": ""}))
    with pytest.raises(MigrationError, match="does not exist"):
        await discover(tmp_path / "missing")


async def test_split_statements() -> None:
    sql = (
        "-- leading comment; with a semicolon\n"  # 1
        "CREATE TABLE a (s text DEFAULT 'x;y', \"odd;name\" int);\n"  # 2
        "/* block; /* nested; */ still comment */\n"  # 3
        "INSERT INTO a VALUES ('it''s; fine', 1);\n"  # 4
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$\n"  # 5
        "  SELECT 1; SELECT 2;\n"  # 6
        "$body$;\n"  # 7
        "SELECT E'back\\'slash;', $$dollar;$$;\n"  # 8
        ";;\n"  # 9
        "SELECT 3"  # 10, no trailing semicolon
    )
    statements = split_statements(sql)
    assert [s.line for s in statements] == [2, 4, 5, 8, 10]
    assert statements[0].text.startswith("CREATE TABLE a") and statements[0].text.endswith(")")
    assert "SELECT 1; SELECT 2;" in statements[2].text
    assert statements[3].text == "SELECT E'back\\'slash;', $$dollar;$$"
    assert statements[4].text == "SELECT 3"
    assert split_statements("  -- only a comment\n") == []


async def test_shipped_migrations_split_cleanly() -> None:
    for migration in await discover():
        statements = split_statements(migration.sql)
        assert statements, migration.file
        assert all(not s.text.endswith(";") for s in statements)
