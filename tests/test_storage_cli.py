"""``technic migrate`` and ``technic history`` end to end, through their argparse wiring."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from technic.cli.storage_commands import add_storage_commands
from technic.engine.eta import EtaCheckpoint, ScanAccuracy
from technic.storage import STAGES, connect_url
from technic.storage.migrate import MIGRATIONS_DIR, discover
from technic.storage.windows import parse_window

from tests.test_server import serve, settings_for
from tests.test_stage_trend import ONSET, TODAY, seed_history

CLOSED_PORT_URL = "postgresql://postgres@127.0.0.1:1/postgres"


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="technic")
    add_storage_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("TECHNIC_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


@pytest.fixture
async def history_url(database_url: str) -> str:
    """A migrated database holding two finished scans of different sizes."""
    database = await connect_url(database_url, migrate=False)
    try:
        repo = database.repository
        for size, scale in ((300, 1.0), (3000, 10.0)):
            scan = await repo.create_scan(uuid4(), {}, universe_size=size)
            await repo.transition(scan.id, "running")
            for stage, seconds in zip(STAGES, (0.1, 1.0, 4.0, 0.2), strict=True):
                await repo.start_stage(scan.id, stage)
                await repo.finish_stage(scan.id, stage, units_done=size, duration_s=seconds * scale)
            await repo.transition(scan.id, "completed")
    finally:
        await database.close()
    return database_url


@pytest.fixture
async def accuracy_url(database_url: str) -> str:
    """A migrated database holding three completed scans with their ETA accuracy."""
    database = await connect_url(database_url, migrate=False)
    try:
        repo = database.repository
        for provider, size, kind, error in (
            ("sample", 300, "sample", 5.0),
            ("sample", 400, "sample", -20.0),
            ("polygon", 2500, "polygon@300/min", 40.0),
        ):
            scan = await repo.create_scan(uuid4(), {"provider": provider}, universe_size=size)
            await repo.transition(scan.id, "running")
            await repo.transition(scan.id, "completed")
            checkpoints = (
                EtaCheckpoint(10, 1.0, 10.0 + error / 10, 10.0),
                EtaCheckpoint(50, 5.0, 5.0, 5.0),
            )
            accuracy = ScanAccuracy(checkpoints, 0.99, 0.5 + error / 100, 0.25, 4.0)
            await repo.record_accuracy(scan.id, accuracy, kind=kind, cache_hit_ratio=None)
    finally:
        await database.close()
    return database_url


@pytest.fixture
async def trend_url(database_url: str) -> str:
    """A migrated database holding 75 days of scans: symbol_scanning 40 % slower from ONSET,
    data_fetching noisy but steady (tests/test_stage_trend.py)."""
    database = await connect_url(database_url, migrate=False)
    try:
        await seed_history(database.repository)
    finally:
        await database.close()
    return database_url


def test_history_trend_table_says_the_verdicts_in_words(
    env: pytest.MonkeyPatch, trend_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("DATABASE_URL", trend_url)
    assert run(["history", "--trend", "--since", "60d"]) == 0
    blocks = capsys.readouterr().out.split("\n\n")
    assert blocks[0].startswith("Stage trends, ") and blocks[0].endswith("UTC, daily intervals")
    fetching, scanning = (block.splitlines() for block in blocks[1:3])
    said = re.fullmatch(
        r"symbol_scanning: p50 \+(\d+) % since (\S+) \(baseline ([\d.]+) s\)", scanning[0]
    )
    assert said is not None, scanning[0]
    assert int(said[1]) == pytest.approx(40, abs=6)
    assert said[2] == f"{ONSET:%Y-%m-%d}"
    assert float(said[3]) == pytest.approx(10.0, rel=0.05)
    assert fetching[0].startswith("data_fetching: steady (p50 ")
    assert scanning[1].split() == ["interval", "count", "p50_s", "p90_s", "symbols/s"]
    rows = [line.split() for line in scanning[3:]]
    assert [row[0] for row in rows] == [
        f"{TODAY - timedelta(days=day):%Y-%m-%d}" for day in range(60, 0, -1)
    ]
    assert all(row[1] == "12" for row in rows)
    assert float(rows[0][2]) == pytest.approx(10.0, rel=0.03)
    assert float(rows[-1][2]) == pytest.approx(14.0, rel=0.06)
    assert float(rows[-1][4]) == pytest.approx(500 / 14.0, rel=0.06)

    assert run(["history", "--trend", "--since", "3d", "--interval", "1h",
                "--stage", "data_fetching", "--provider", "polygon"]) == 0  # fmt: skip
    [title, block] = capsys.readouterr().out.split("\n\n")
    assert title.endswith("UTC, hourly intervals, provider polygon")
    lines = block.splitlines()
    assert lines[0] == "data_fetching: not enough runs to judge"
    rows = [line.split() for line in lines[3:]]
    assert len(rows) in (8, 9)  # 3 polygon scans a day, at 00:30, 08:30 and 16:30
    assert {row[1] for row in rows} == {"00:00", "08:00", "16:00"}
    assert all(row[2] == "1" for row in rows)

    assert run(["history", "--trend", "--universe-size-bucket", "1000-9999"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["no completed stages in this window"]


def test_history_trend_json_is_what_the_endpoint_answers(
    env: pytest.MonkeyPatch, trend_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("DATABASE_URL", trend_url)
    query = "since=45d&interval=1w&stage=symbol_scanning&provider=sample&bucket=100-999"

    async def endpoint() -> dict:
        async with serve(settings_for(trend_url, tmp_path)) as service:
            return await (await service.get(f"/stats/stages/trend?{query}")).json()

    assert run(["history", "--trend", "--since", "45d", "--interval", "1w",
                "--stage", "symbol_scanning", "--provider", "sample",
                "--universe-size-bucket", "100-999", "--format", "json"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    answered = asyncio.run(endpoint())
    assert printed.pop("until")[:13] == answered.pop("until")[:13]  # the same hour
    assert printed == answered
    assert printed["bucket"] == "100-999" and printed["interval"] == "1w"
    assert [s["stage"] for s in printed["stages"]] == ["symbol_scanning"]


def test_history_accuracy_table(
    env: pytest.MonkeyPatch, accuracy_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("DATABASE_URL", accuracy_url)
    assert run(["history", "--accuracy", "--since", "1d"]) == 0
    blocks = capsys.readouterr().out.split("\n\n")
    assert blocks[0].startswith("ETA accuracy, ") and blocks[0].endswith(" UTC")
    polygon, sample = (block.splitlines() for block in blocks[1:])
    assert polygon[0] == "polygon, universe size 1000-9999: 1 scan"
    assert sample[0] == "sample, universe size 100-999: 2 scans"
    assert sample[1].split() == [
        "checkpoint", "count", "median", "|err|", "p90", "|err|", "median", "err",
    ]  # fmt: skip
    rows = [line.split() for line in sample[3:8]]
    assert rows == [
        ["10%", "2", "12.5%", "18.5%", "-7.5%"],
        ["25%", "0", "-", "-", "-"],
        ["50%", "2", "0.0%", "0.0%", "+0.0%"],
        ["75%", "0", "-", "-", "-"],
        ["90%", "0", "-", "-", "-"],
    ]
    assert sample[8] == (
        "linearity (median R-squared): time 0.990, overall 0.425; longest stall (median) 0.250 s"
    )
    assert sample[9] == "ETA within 10% at the 10% checkpoint: 50% of scans"
    assert polygon[-1] == "ETA within 10% at the 10% checkpoint: 0% of scans"

    assert run(["history", "--accuracy", "--provider", "nasdaq"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        "no completed scans with an accuracy record in this window"
    )


def test_history_accuracy_json_is_the_endpoint_shape(
    env: pytest.MonkeyPatch, accuracy_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("DATABASE_URL", accuracy_url)
    assert run(["history", "--accuracy", "--format", "json", "--provider", "sample"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"since", "until", "groups", "recent"}
    assert datetime.fromisoformat(report["until"]) - datetime.fromisoformat(
        report["since"]
    ) == timedelta(days=7)
    [group] = report["groups"]
    assert (group["provider"], group["bucket"], group["scans"]) == ("sample", "100-999", 2)
    assert group["checkpoints"][0] == {
        "checkpoint": 10, "count": 2, "median_abs_error_pct": pytest.approx(12.5),
        "p90_abs_error_pct": pytest.approx(18.5), "median_error_pct": pytest.approx(-7.5),
    }  # fmt: skip
    assert group["within_10pct_at_10"] == 0.5
    assert [r["error_pct"]["10"] for r in report["recent"]] == [
        pytest.approx(-20.0), pytest.approx(5.0),
    ]  # fmt: skip

    assert run(["history", "--accuracy", "--format", "json", "--universe-size-bucket", "2500"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(g["provider"], g["bucket"]) for g in report["groups"]] == [("polygon", "1000-9999")]


def test_parse_window() -> None:
    assert parse_window("30m") == timedelta(minutes=30)
    assert parse_window("12h") == timedelta(hours=12)
    assert parse_window("7d") == timedelta(days=7)
    assert parse_window(" 2w ") == timedelta(weeks=2)
    assert parse_window("3660d") == timedelta(days=3660)
    bad_words = ("7", "d", "0d", "-1d", "7x", "7 days", "1.5d", "", "7d; DROP TABLE scans")
    # 999999999w is more seconds than a timedelta holds: refused, not an OverflowError (500).
    too_long = ("3661d", "999999w", "999999999w", "999999999d", "9" * 40 + "d")
    for bad in (*bad_words, *too_long, "７d"):
        with pytest.raises(ValueError, match="--since"):
            parse_window(bad, field="--since")


def test_history_table(
    env: pytest.MonkeyPatch, history_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("DATABASE_URL", history_url)
    assert run(["history", "--since", "1d"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("Stage timings, ")
    assert lines[1].split() == [
        "stage", "count", "mean_s", "p50_s", "p90_s", "p99_s", "symbols/s", "share",
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[3 : 3 + len(STAGES)]}
    assert set(rows) == set(STAGES)
    scanning = rows["symbol_scanning"]
    assert scanning[1:] == ["*", "2", "22.000", "22.000", "36.400", "39.640", "75.0", "75%"]
    assert lines[-1].endswith("overall: symbol_scanning")


def test_history_json_and_buckets(
    env: pytest.MonkeyPatch, history_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("DATABASE_URL", history_url)
    assert run(["history", "--format", "json", "--universe-size-bucket", "all"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["by_bucket"] is True and report["dominant_stage"] == "symbol_scanning"
    assert [(s["bucket"], s["stage"]) for s in report["stages"]] == [
        *(("100-999", stage) for stage in STAGES),
        *(("1000-9999", stage) for stage in STAGES),
    ]
    fetch = report["stages"][1]
    assert fetch["count"] == 1 and fetch["mean_s"] == 1.0 and fetch["symbols_per_s"] == 300.0
    assert datetime.fromisoformat(report["until"]) - datetime.fromisoformat(
        report["since"]
    ) == timedelta(days=7)

    assert run(["history", "--format", "json", "--universe-size-bucket", "2500"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bucket"] == "1000-9999" and report["by_bucket"] is False
    assert [s["count"] for s in report["stages"]] == [1, 1, 1, 1]
    assert report["stages"][2]["mean_s"] == 40.0

    assert run(["history", "--universe-size-bucket", "1000-9999"]) == 0
    out = capsys.readouterr().out
    assert "universe size 1000-9999" in out.splitlines()[0]
    assert datetime.now(UTC).strftime("%Y-%m-%d") in out.splitlines()[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["history", "--since", "7x"], "--since: must be a duration like"),
        (["history", "--since", "' OR 1=1 --"], "--since: must be a duration like"),
        (["history", "--universe-size-bucket", "1000-5000"], "--universe-size-bucket"),
        (["history", "--since", "99999999w"], "--since"),
        (["history", "--accuracy", "--since", "forever"], "--since: must be a duration like"),
        (["history", "--accuracy", "--universe-size-bucket", "big"], "--universe-size-bucket"),
        (["history", "--provider", "sample"], "--provider: only with --accuracy or --trend"),
        (["history", "--trend", "--interval", "2d"], "--interval: must be one of 1h, 1d, 1w"),
        (["history", "--interval", "1h"], "--interval: only with --trend"),
        (["history", "--trend", "--stage", "warp"], "--stage: must be one of universe_loading"),
        (["history", "--stage", "finalization"], "--stage: only with --trend"),
        (["history", "--trend", "--accuracy"], "--trend and --accuracy: choose one"),
        (["history", "--trend", "--universe-size-bucket", "all"], "--universe-size-bucket"),
        (["history", "--trend", "--since", "0d"], "--since: must be a duration like"),
    ],
)
def test_history_bad_arguments(
    env: pytest.MonkeyPatch, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("DATABASE_URL", CLOSED_PORT_URL)  # never reached: arguments are checked first
    assert run(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert message in captured.err


@pytest.mark.parametrize("command", ["migrate", "history"])
def test_database_down(
    env: pytest.MonkeyPatch, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("DATABASE_URL", CLOSED_PORT_URL)
    assert run([command]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"technic {command}: ")
    assert "database unavailable" in captured.err and len(captured.err.splitlines()) == 1


def test_bad_settings(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    env.setenv("DATABASE_URL", "mysql://nope")
    assert run(["migrate"]) == 2
    assert run(["history"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("DATABASE_URL" in line for line in err)


def test_migrate_reports(
    env: pytest.MonkeyPatch,
    empty_database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env.setenv("DATABASE_URL", empty_database_url)
    assert run(["migrate"]) == 0
    out = capsys.readouterr().out.splitlines()
    files = [m.file for m in asyncio.run(discover())]
    assert out[1 : 1 + len(files)] == [f"applied {file}" for file in files]
    assert out[-1].startswith(f"{len(files)} migrations applied in ")
    assert run(["migrate"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"nothing to apply; schema is up to date ({len(files)} migrations applied earlier)"
    )

    broken = tmp_path / "broken"
    broken.mkdir()
    for file in files:
        (broken / file).write_text((MIGRATIONS_DIR / file).read_text())
    oops = f"{int(files[-1][:4]) + 1:04d}_oops.sql"  # versions may have gaps
    (broken / oops).write_text("ALTER TABLE scans\n  ADD COLUMN x nosuchtype;\n")
    assert run(["migrate", "--migrations-dir", str(broken)]) == 1
    captured = capsys.readouterr()
    assert len(captured.err.splitlines()) == 1
    assert f"migration failed: {oops} line 2" in captured.err
    assert 'type "nosuchtype" does not exist' in captured.err


@pytest.mark.embedded
def test_fresh_clone_without_database_url(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["migrate"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"database: embedded PostgreSQL in {(tmp_path / 'data' / 'postgres')}"
    assert "applied 0001_initial.sql" in out
    assert run(["history"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no completed stages in this window"
    assert run(["migrate"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("nothing to apply")
