"""``technic scan`` as a user runs it: a real subprocess, real worker processes."""

from __future__ import annotations

import csv
import io
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from technic.engine import ROW_FIELDS

TECHNIC = [sys.executable, "-m", "technic.cli"]
ROOT = Path(__file__).resolve().parents[1]


def technic(*args: str, data_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "TECHNIC_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [*TECHNIC, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def test_scan_ranks_the_sample_as_a_table(tmp_path: Path) -> None:
    done = technic("scan", "--workers", "2", data_dir=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["#", "Symbol", "Sector"]
    assert lines[1].split()[0] == "1"
    assert lines[-1].startswith("503 candidates, 503 scanned, 1 failed")
    # stderr is not a terminal here: plain log lines instead of the live view
    assert "[INFO] Starting stage: universe_loading" in done.stderr
    assert "[INFO] Completed stage: finalization" in done.stderr


def test_scan_json_document(tmp_path: Path) -> None:
    done = technic(
        "scan",
        "--provider",
        "synthetic",
        "--symbols",
        "300",
        "--bars",
        "120",
        "--format",
        "json",
        "--no-progress",
        data_dir=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    document = orjson.loads(done.stdout)
    assert set(document) == {"config", "results", "metrics", "failures"}
    metrics = document["metrics"]
    assert {
        "stage_timings",
        "symbols_per_second",
        "symbols_scanned",
        "symbols_failed",
        "total_seconds",
    } <= set(metrics)
    assert set(metrics["stage_timings"]) == {
        "universe_loading",
        "data_fetching",
        "symbol_scanning",
        "finalization",
    }
    assert metrics["symbols_scanned"] == len(document["results"]) == 300
    assert list(document["results"][0]) == ["rank", *ROW_FIELDS]
    assert document["config"]["provider"] == "synthetic"


def test_scan_csv_to_a_file(tmp_path: Path) -> None:
    output = tmp_path / "out.csv"
    done = technic(
        "scan",
        "--sectors",
        "Energy",
        "--min-tech-rating",
        "40",
        "--format",
        "csv",
        "--output",
        str(output),
        "--no-progress",
        data_dir=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(output.read_text())))
    assert rows and {row["sector"] for row in rows} == {"Energy"}
    assert all(float(row["tech_rating"]) >= 40 for row in rows)


def test_scan_csv_neutralises_formulas_from_a_universe_file(tmp_path: Path) -> None:
    names = {"AAPL": "=HYPERLINK(\"http://x.example\")", "MSFT": "+1+1", "XOM": "-2+3",
             "JPM": "@SUM(A1)", "RTN": "Raytheon"}  # fmt: skip
    universe = tmp_path / "universe.csv"
    universe.write_text(
        "symbol,name,sector\n"
        + "".join(f'{symbol},"{name.replace(chr(34), chr(34) * 2)}",=cmd|calc\n'
                  for symbol, name in names.items())
    )  # fmt: skip
    done = technic(
        "scan", "--universe", str(universe), "--format", "csv", "--no-progress", data_dir=tmp_path
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout, newline="")))
    assert {row["symbol"]: row["name"] for row in rows} == {
        symbol: name if symbol == "RTN" else f"'{name}" for symbol, name in names.items()
    }
    assert {row["sector"] for row in rows} == {"'=cmd|calc"}
    returns = [row["ret_1d"] for row in rows]
    assert any(r.startswith("-") for r in returns)  # negative numbers stay numbers
    assert all(float(r) == float(r) for r in returns)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-symbols", "0"], "--max-symbols: must be at least 1"),
        (["--max-symbols", "many"], "--max-symbols: must be a whole number"),
        (["--min-tech-rating", "120"], "min_tech_rating: must be between 0 and 100"),
        (["--sectors", "Crypto"], "unknown sectors 'Crypto'; valid: "),
        (["--provider", "yahoo"], "invalid choice: 'yahoo'"),
        (["--as-of", "2017-02-30"], "must be a date as YYYY-MM-DD"),
        (["--as-of", "1999-01-01"], "before the first date of the data"),
        (["--symbols", "10"], "--symbols applies to --provider synthetic only"),
        (["--provider", "csv"], "data_dir: the csv provider needs a directory"),
        (["--provider", "csv", "--data-dir", "/nope"], "data directory not found: /nope"),
        (["--universe", "/nope.csv"], "universe file not found"),
        (["--risk-pct", "abc"], "must be a number"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    done = technic("scan", "--no-progress", *args, data_dir=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert message in lines[0]


def test_ctrl_c_cancels_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "TECHNIC_DATA_DIR": str(tmp_path)}
    process = subprocess.Popen(
        [*TECHNIC, "scan", "--provider", "synthetic", "--symbols", "60000", "--bars", "300"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    seen = ""
    while "Starting stage: symbol_scanning" not in seen and time.monotonic() < deadline:
        seen += process.stderr.readline()
    process.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert time.monotonic() - interrupted < 5
    assert "technic scan: cancelled" in stderr
    assert "Traceback" not in stderr
    assert stdout == ""


def test_live_view_on_a_terminal(tmp_path: Path) -> None:
    """On a TTY, stderr shows the seed's multi-stage view redrawn in place."""
    env = {**os.environ, "TECHNIC_DATA_DIR": str(tmp_path), "COLUMNS": "160"}
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [*TECHNIC, "scan", "--provider", "synthetic", "--symbols", "5000", "--bars", "200"],
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env=env,
        cwd=ROOT,
    )
    os.close(follower)
    screen = b""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                screen += os.read(leader, 65536)
            except OSError:  # the terminal closed
                break
        elif process.poll() is not None:
            break
    process.wait(timeout=30)
    os.close(leader)
    text = screen.decode()
    assert process.returncode == 0
    assert "\x1b[" in text  # redrawn in place
    for label in ("Universe Loading", "Data Fetching", "Symbol Scanning", "Finalization"):
        assert label in text
    assert "5000/5000 symbols" in text
    assert "100.0%" in text
    assert "ETA" in text


def test_a_scan_beyond_max_scan_cells_exits_2_before_fetching(tmp_path: Path) -> None:
    started = time.monotonic()
    done = technic(
        "scan",
        *("--provider", "synthetic", "--symbols", "5000", "--bars", "10000"),
        *("--lookback", "10000", "--no-progress"),
        data_dir=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - started < 30
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "5,000 symbols x 10,000 bars = 50,000,000 cells" in lines[0]
    assert "MAX_SCAN_CELLS (32,000,000)" in lines[0]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_cache_max_bytes_bounds_the_block_cache(tmp_path: Path) -> None:
    """Two scans of 2.4 MB blocks into a cache of 3 MB: only the last one stays."""
    env = {**os.environ, "TECHNIC_DATA_DIR": str(tmp_path), "CACHE_MAX_BYTES": "3000000"}
    synthetic = ("--provider", "synthetic", "--symbols", "1000", "--bars", "60")
    for seed in ("1", "2"):
        done = subprocess.run(
            [*TECHNIC, "scan", *synthetic, "--seed", seed, "--no-progress", "--workers", "0"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
    cached = sum(f.stat().st_size for f in (tmp_path / "cache").rglob("*") if f.is_file())
    assert 0 < cached <= 3_000_000


def test_serve_processes_needs_redis_and_a_sane_count(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["TECHNIC_DATA_DIR"] = str(tmp_path)
    technic = [sys.executable, "-m", "technic.cli", "serve"]
    alone = subprocess.run([*technic, "--processes", "2"], env=env, capture_output=True, text=True)
    assert alone.returncode == 2
    assert "--processes needs REDIS_URL" in alone.stderr
    for bad, says in (("0", "between 1 and 64"), ("65", "between 1 and 64"), ("two", "whole")):
        answer = subprocess.run(
            [*technic, "--processes", bad], env=env, capture_output=True, text=True
        )
        assert answer.returncode == 2 and says in answer.stderr, answer.stderr
