"""``technic watch`` and ``technic scan --server`` against a real ``technic serve``.

Both run as subprocesses, as a person runs them, and the tests check what they print and
how they exit: 0 completed, 1 failed or interrupted, 130 cancelled, 2 bad arguments.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from technic.cli.main import main
from technic.cli.remote import Remote, RemoteError, parse_scan_id
from technic.cli.terminal_view import render
from technic.engine import MultiStageProgressTracker
from technic.server.cursor import Cursor

from tests.live_server import Server, running_scans, running_server, wait_until

TECHNIC = Path(sys.executable).with_name("technic")
STAGE_LINES = ("Universe Loading", "Data Fetching", "Symbol Scanning", "Finalization")
# the first line of the live view: the time bar, its percent and the weighted sum beside it
OVERALL_LINE = re.compile(
    r"Scan \w+ +(?P<bar>[█░]{30}) +(?P<time>[\d.]+)% of time  "
    r"stages (?P<weighted>[\d.]+)% weighted  ETA .*elapsed [\d.]+s"
)


@pytest.fixture(scope="module")
def server(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("technic-data")
    with running_server(pg_server_url, data_dir, "remote-server.log") as service:
        yield service


def technic(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TECHNIC_API_TOKEN", "TECHNIC_SERVER")}
    return subprocess.run(
        [str(TECHNIC), *args], capture_output=True, text=True, timeout=timeout_s, env=env
    )


SPAWNED: list[subprocess.Popen[str]] = []


def spawn(*args: str) -> subprocess.Popen[str]:
    """A ``technic`` running in the background; killed after the test if it is still there."""
    env = {k: v for k, v in os.environ.items() if k not in ("TECHNIC_API_TOKEN", "TECHNIC_SERVER")}
    process = subprocess.Popen(
        [str(TECHNIC), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    SPAWNED.append(process)
    return process


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    yield
    while SPAWNED:
        process = SPAWNED.pop()
        if process.poll() is None:
            process.kill()
        process.communicate()


def status_of(server: Server, scan_id: str) -> str:
    return str(server.api("GET", f"/scan/progress/{scan_id}")["status"])


# -- pure parts ----------------------------------------------------------------------------------


def test_server_urls_and_scan_ids_are_checked() -> None:
    remote = Remote.parse("http://example.test:9000/", "t")
    assert remote.base_url == "http://example.test:9000"
    assert remote.ws_url("x", Cursor("3fa9c2d1", 7)) == (
        "ws://example.test:9000/scan/ws/x?since=3fa9c2d1.7"
    )
    assert Remote.parse("https://h", None).ws_url("x", None) == "wss://h/scan/ws/x"
    assert remote.headers == {"Authorization": "Bearer t"}
    for bad in ("example.test:9000", "ftp://h", "http://"):
        with pytest.raises(RemoteError) as error:
            Remote.parse(bad, None)
        assert error.value.exit_code == 2
    with pytest.raises(RemoteError):
        parse_scan_id("not-a-scan")
    assert parse_scan_id(" 6F9619FF-8B86-D011-B42D-00C04FC964FF ") == (
        "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    )


# -- technic watch --------------------------------------------------------------------------------


def test_watch_a_scan_to_completion_exits_0(server: Server) -> None:
    scan_id = server.start_scan(provider="synthetic", max_symbols=3000)
    done = technic("watch", scan_id, "--server", server.url)
    assert done.returncode == 0, done.stderr
    for stage in ("universe_loading", "data_fetching", "symbol_scanning", "finalization"):
        assert f"Completed stage: {stage}" in done.stderr
    # the final view: the same lines as the local technic scan draws
    assert "Scan completed" in done.stderr and "100.0%" in done.stderr
    # the main bar is the share of the expected time; the seed's weighted sum is beside it
    assert server.api("GET", f"/scan/progress/{scan_id}")["time_progress"] == 100
    final = [line for line in done.stderr.splitlines() if line.startswith("Scan completed")]
    assert final and OVERALL_LINE.fullmatch(final[-1]), final
    assert f"{'█' * 30} 100.0% of time  stages 100.0% weighted" in final[-1]
    for label in STAGE_LINES:
        line = next(line for line in done.stderr.splitlines() if label in line and "%)" in line)
        assert "✅" in line and "completed" in line
    assert "3000/3000 symbols" in done.stderr
    assert done.stdout == ""


def test_watch_a_cancelled_scan_exits_130(server: Server) -> None:
    scan_id = server.start_scan(provider="synthetic", max_symbols=60_000)
    watcher = spawn("watch", scan_id, "--server", server.url)
    wait_until(lambda: scan_id in running_scans(server))
    time.sleep(0.5)
    server.api("POST", f"/scan/cancel/{scan_id}")
    _, stderr = watcher.communicate(timeout=30)
    assert watcher.returncode == 130, stderr
    assert f"scan {scan_id} cancelled" in stderr
    assert "Scan cancelled" in stderr


def test_watch_a_failed_scan_exits_1(server: Server) -> None:
    scan_id = server.start_scan(max_symbols=20, as_of="2030-01-02")  # after the sample's data
    done = technic("watch", scan_id, "--server", server.url)
    assert done.returncode == 1, done.stderr
    assert "failed" in done.stderr and "2030-01-02" in done.stderr


def test_watch_refuses_unknown_scans_and_unreachable_servers(server: Server) -> None:
    unknown = technic("watch", "6f9619ff-8b86-d011-b42d-00c04fc964ff", "--server", server.url)
    assert unknown.returncode == 2
    assert "has no scan" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    closed = technic(
        "watch", "6f9619ff-8b86-d011-b42d-00c04fc964ff", "--server", "http://127.0.0.1:9"
    )
    assert closed.returncode == 1
    assert "cannot reach http://127.0.0.1:9" in closed.stderr


def test_a_snapshot_without_time_progress_draws_the_weighted_sum() -> None:
    """An older server sends no time_progress: its weighted sum is then the bar, unnamed."""
    tracker = MultiStageProgressTracker(clock=lambda: 10.0, wall_clock=lambda: 1.7e9)
    tracker.start()
    tracker.start_stage("universe_loading", total=10)
    tracker.update("universe_loading", 10)
    tracker.complete_stage("universe_loading")
    snapshot = tracker.snapshot()
    del snapshot["time_progress"]
    first = render(snapshot)[0]
    assert f"{'█' * 2}{'░' * 28}   5.0%  ETA" in first, first
    assert "weighted" not in first and "of time" not in first


@pytest.mark.parametrize(
    "args",
    [
        ["watch", "nope"],
        ["watch", "6f9619ff-8b86-d011-b42d-00c04fc964ff", "--server", "localhost:8000"],
        ["scan", "--server", "http://127.0.0.1:9", "--min-tech-rating", "150"],
        ["scan", "--server", "http://127.0.0.1:9", "--workers", "2"],
        ["scan", "--server", "http://127.0.0.1:9", "--provider", "csv", "--data-dir", "x"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2  # checked before anything is sent
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_watch_redraws_in_place_on_a_terminal(server: Server) -> None:
    scan_id = server.start_scan(provider="synthetic", max_symbols=60_000)
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [str(TECHNIC), "watch", scan_id, "--server", server.url],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        close_fds=True,
    )
    os.close(terminal)
    output = b""
    cancelled = False
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the other side closed: the watcher exited
                break
            output += chunk
            if not cancelled and output.count(b"Symbol Scanning") >= 3:
                server.api("POST", f"/scan/cancel/{scan_id}")
                cancelled = True
    finally:
        os.close(controller)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 130
    text = output.decode(errors="replace")
    assert "\x1b[2K" in text and "\x1b[6F" in text  # lines are cleared and redrawn in place
    frames = [OVERALL_LINE.search(line) for line in text.split("\x1b[2K")]
    shown = [(m["bar"], float(m["time"]), float(m["weighted"])) for m in frames if m]
    assert len(shown) >= 3, text
    for bar, timed, _ in shown:  # the bar is drawn from the time share
        assert bar.count("█") == round(30 * timed / 100), (bar, timed)
    # fetching is most of a synthetic scan's time but 20 % of the weighted sum
    assert any(abs(timed - weighted) >= 1 for _, timed, weighted in shown), shown
    assert "Starting stage" not in text  # the log lines are for pipes, not terminals
    assert "Scan cancelled" in text


# -- technic scan --server ------------------------------------------------------------------------


def test_scan_on_a_server_prints_the_results(server: Server) -> None:
    done = technic(
        "scan", "--server", server.url, "--provider", "synthetic", "--symbols", "400",
        "--min-tech-rating", "50", "--format", "csv",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert rows and all(float(row["tech_rating"]) >= 50 for row in rows)
    assert "started; watch it at " in done.stderr
    assert "Completed stage: finalization" in done.stderr

    table = technic("scan", "--server", server.url, "--max-symbols", "30", "--sectors", "Energy")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["#", "Symbol", "Sector"]
    assert all("Energy" in line for line in lines[1:-1])
    assert lines[-1].endswith("s") and "candidates" in lines[-1]

    as_json = technic("scan", "--server", server.url, "--max-symbols", "10", "--format", "json")
    document = json.loads(as_json.stdout)
    assert document["config"]["max_symbols"] == 10
    assert len(document["results"]) == document["metrics"]["candidates"]
    assert set(document["metrics"]["stage_timings"]) == {
        "universe_loading", "data_fetching", "symbol_scanning", "finalization",
    }  # fmt: skip


def test_scan_on_a_server_prints_every_row_of_a_large_scan(server: Server) -> None:
    """More rows than one page of the API holds (1000): the client reads every page."""
    done = technic(
        "scan", "--server", server.url, "--provider", "synthetic", "--symbols", "2200",
        "--bars", "30", "--format", "json", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    ranks = [row["rank"] for row in document["results"]]
    assert ranks == list(range(1, document["metrics"]["candidates"] + 1))
    assert len(ranks) + len(document["failures"]) == 2200


def test_scan_on_a_server_exit_codes(server: Server) -> None:
    failed = technic("scan", "--server", server.url, "--max-symbols", "5", "--as-of", "2030-01-02")
    assert failed.returncode == 1
    assert "failed" in failed.stderr

    refused = technic("scan", "--server", server.url, "--sectors", "Nonsense")
    assert refused.returncode == 2
    assert "the server refused the scan: sectors" in refused.stderr


def test_ctrl_c_cancels_the_scan_on_the_server(server: Server) -> None:
    process = spawn("scan", "--server", server.url, "--provider", "synthetic", "--symbols", "60000")
    assert process.stderr is not None
    line = process.stderr.readline()
    assert "started; watch it at" in line, line
    scan_id = line.split()[3]  # "technic scan: scan ID started; watch it at URL"
    wait_until(lambda: scan_id in running_scans(server))
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert stdout == ""
    assert status_of(server, scan_id) == "cancelled"


def test_watch_survives_a_server_restart(pg_server_url: str, tmp_path: Path) -> None:
    with running_server(pg_server_url, tmp_path / "data", "remote-restart-server.log") as service:
        scan_id = service.start_scan(provider="synthetic", max_symbols=60_000)
        wait_until(lambda: scan_id in running_scans(service))
        watcher = spawn("watch", scan_id, "--server", service.url)
        assert watcher.stderr is not None
        assert "Starting stage" in watcher.stderr.readline()  # it is watching
        service.kill()
        time.sleep(1.0)
        service.start()
        _, stderr = watcher.communicate(timeout=60)
    assert "reconnecting" in stderr
    assert watcher.returncode == 1, stderr
    assert f"scan {scan_id} interrupted" in stderr
