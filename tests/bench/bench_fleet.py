"""Fleet benchmark: WebSocket watchers of one real scan across real ``technic serve`` processes.

Run:  .venv/bin/python tests/bench/bench_fleet.py [--watchers 10000] [--process-watchers 19000]
      [--symbols 200000] [--bars 100] [--repeat 1] [--parts fleet processes]
      [--quiet-wait-s 60 --quiet-cpus 0.3]

Everything is real and on loopback: one PostgreSQL (embedded in a temporary directory,
started once, unless ``DATABASE_URL`` is set), a ``redis-server`` of its own on a free port
(tests/redis_server.py) and ``technic serve`` processes in fleet mode (``REDIS_URL``). The
watchers run in a separate client process on bare asyncio protocols (bench_fanout's
``RawWatcher``), so the client does not saturate a core before the servers do. Each
records ``receive time - published_at`` (the owner's stamp) for every snapshot published
after all watchers were connected.

1. ``fleet``: three instances A, B and C. The same watchers either split over B and C while
   A owns the scan (every frame crosses Redis), or all on A, the owner (in-process hub).
2. ``processes``: one ``technic serve --processes N`` on one port, N = 1 then 2, with
   ``--process-watchers`` watchers (the kernel spreads them over the processes).

Watchers must be connected before the scan runs, and the scan must run on a chosen
instance. So each run first fills every instance's single scan slot
(``MAX_CONCURRENT_SCANS=1``) with a blocker: a Massive (Polygon) scan whose API address is
a socket that never answers, which costs no CPU. The measured scan then waits in the fleet
queue while the watchers connect; cancelling the chosen owner's blocker frees the one slot
that can claim it, and the other blockers are cancelled once it runs. The measured scan is
a synthetic one (``--symbols`` x ``--bars``, ``MAX_SYMBOLS_CAP`` raised to allow it; keep it
under ``MAX_SCAN_CELLS``) with a new seed each run, so no run finds its data cached; its
progress is published as a real scan's is (at most every 0.1 s), with the scan's workers
competing for the same cores. 200,000 x 100 takes ~10 s here with 1,000 watchers, and
longer when the fan-out takes the cores.

Printed per run: lag p50 / p99 / max, frames delivered per second, the share of (watcher,
snapshot) pairs delivered (the rest conflated for watchers that fell behind), how many
watchers got the terminal state and a 1000 close, the scan's own time, and how busy the
machine was (all processes, and the part not spent by this benchmark's processes).
Every wait is bounded; every process started here is stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from technic.engine.progress import TERMINAL_STATUSES  # noqa: E402

from tests.bench.bench_fanout import (  # noqa: E402
    HOST,
    RawWatcher,
    cpu_seconds,
    machine_cpu_seconds,
    published_at_of,
    raise_nofile_limit,
    wait_for_quiet,
)
from tests.live_server import Server, _free_port, server_env  # noqa: E402
from tests.redis_server import running_redis  # noqa: E402

SEQ_KEY = b'"seq":'
# How long a blocker's instance, or the measured scan's owner, may take to claim a scan.
CLAIM_TIMEOUT_S = 30.0
START_TIMEOUT_S = 120.0


# -- client process ----------------------------------------------------------------------


class FleetWatcher(RawWatcher):
    """A raw watcher that measures only the snapshots published from ``since`` on: the
    frames sent at connection (the queued scan's state) are not fan-out."""

    def __init__(self, path: str, lags: array[float]) -> None:
        super().__init__(path, lags)
        self.since = float("inf")
        self.first_seq: int | None = None
        self.first_at = float("inf")

    def on_text(self, payload: bytes) -> None:
        received = time.time()
        self.last, self.last_at = payload, received
        published_at = published_at_of(payload)
        if published_at is None or published_at < self.since:
            return
        self.lags.append(received - published_at)
        self.frames += 1
        if self.first_seq is None:
            self.first_seq, self.first_at = seq_of(payload), received


def seq_of(payload: bytes) -> int:
    at = payload.index(SEQ_KEY) + len(SEQ_KEY)
    end = at
    while payload[end] in b"0123456789":
        end += 1
    return int(payload[at:end])


async def run_client(args: argparse.Namespace) -> dict[str, Any]:
    """Connect the watchers round-robin over ``--ports``, say so on stdout, then wait
    (bounded) for every one of them to be closed by its server."""
    import numpy as np
    import orjson

    raise_nofile_limit()
    loop = asyncio.get_running_loop()
    path = f"/scan/ws/{args.scan_id}"
    lags: array[float] = array("d")
    gate = asyncio.Semaphore(args.connect_batch)

    async def connect(index: int) -> FleetWatcher | None:
        port = args.ports[index % len(args.ports)]
        async with gate:
            for attempt in range(3):
                try:
                    _, watcher = await asyncio.wait_for(
                        loop.create_connection(lambda: FleetWatcher(path, lags), HOST, port), 30
                    )
                    async with asyncio.timeout(30):
                        await watcher.upgraded
                    return watcher
                except (OSError, TimeoutError):
                    await asyncio.sleep(0.2 * (attempt + 1))
        return None

    ramp_started = time.monotonic()
    try:
        async with asyncio.timeout(args.ramp_timeout_s):
            connected = await asyncio.gather(*(connect(i) for i in range(args.watchers)))
    except TimeoutError:
        print("client: the watchers did not connect in time", file=sys.stderr, flush=True)
        raise
    watchers = [watcher for watcher in connected if watcher is not None]
    ramp_s = time.monotonic() - ramp_started
    since = time.time()
    for watcher in watchers:
        watcher.since = since
    cpu_before = cpu_seconds()
    print(f"CONNECTED {len(watchers)}", flush=True)
    _, pending = await asyncio.wait([w.done for w in watchers], timeout=args.run_timeout_s)
    for watcher in watchers:
        if not watcher.done.done() and watcher.transport is not None:
            watcher.transport.abort()
    client_cpu_s = cpu_seconds() - cpu_before

    finals = [orjson.loads(w.last) if w.last is not None else {} for w in watchers]
    terminal_seq = max((final.get("seq", 0) for final in finals), default=0)
    first_seqs = [w.first_seq for w in watchers if w.first_seq is not None]
    published = terminal_seq - min(first_seqs) + 1 if first_seqs else 0
    complete = sum(
        final.get("status") in TERMINAL_STATUSES
        and final.get("seq") == terminal_seq
        and watcher.close_code == 1000
        for final, watcher in zip(finals, watchers, strict=True)
    )
    frames = sum(w.frames for w in watchers)
    values = np.frombuffer(lags, dtype=np.float64) if lags else np.zeros(1)
    first_at = min((w.first_at for w in watchers), default=since)
    last_at = max((w.last_at for w in watchers), default=since)
    return {
        "watchers": args.watchers,
        "connected": len(watchers),
        "ramp_s": ramp_s,
        "lag_p50_ms": float(np.percentile(values, 50)) * 1e3,
        "lag_p99_ms": float(np.percentile(values, 99)) * 1e3,
        "lag_max_ms": float(values.max()) * 1e3,
        "frames": frames,
        "published": published,
        "delivered_share": frames / (published * len(watchers)) if published else 0.0,
        "complete": complete,
        "still_open": len(pending),
        "terminal_status": next((f.get("status") for f in finals if f), None),
        "measured_s": last_at - first_at,
        "client_cpu_s": client_cpu_s,
    }


# -- processes and machine load --------------------------------------------------------


def process_cpu_seconds(roots: set[int], exclude: set[int]) -> float:
    """CPU seconds so far of ``roots`` and their descendants, with those of their children
    that ended (a scan's worker processes may end before the run does), except this
    process's own ended children (its clients, counted by themselves)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    own = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        ended_children = 0 if int(entry) == own else int(fields[13]) + int(fields[14])
        times[int(entry)] = (int(fields[11]) + int(fields[12]) + ended_children) / tick
    total = 0.0
    for pid, seconds in times.items():
        ancestor = pid
        while ancestor > 1 and ancestor not in roots and ancestor not in exclude:
            ancestor = parents.get(ancestor, 0)
        if ancestor in roots:
            total += seconds
    return total


@contextlib.contextmanager
def silent_socket() -> Iterator[str]:
    """A listening socket that never accepts: requests to it wait until their timeout."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen(1024)
        yield f"http://{HOST}:{sock.getsockname()[1]}"


@contextlib.contextmanager
def database_url(directory: Path) -> Iterator[tuple[str, int | None]]:
    """``DATABASE_URL``, or an embedded PostgreSQL (with its postmaster's pid, whose CPU
    belongs to the benchmark)."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        yield url, None
        return
    from technic.storage.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(directory / "postgres")
    embedded.start()
    try:
        postmaster = int((directory / "postgres" / "postmaster.pid").read_text().split()[0])
        yield embedded.url("postgres"), postmaster
    finally:
        embedded.stop()


def get_json(base_url: str, path: str, method: str = "GET", body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{base_url}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def wait_for(what: str, condition: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")


def active(base_url: str) -> dict[str, dict[str, Any]]:
    return {scan["scan_id"]: scan for scan in get_json(base_url, "/scan/active")["active"]}


def stored_metrics(base_url: str, scan_id: str) -> dict[str, Any] | None:
    """The scan's performance metrics once its owner stored its results."""
    try:
        return get_json(base_url, f"/scan/results/{scan_id}?limit=1").get("performance_metrics")
    except OSError:
        return None


def owner_pid(instance: str | None) -> int | None:
    """The pid in an owner name (host:pid:space:token)."""
    parts = (instance or "").split(":")
    return int(parts[1]) if len(parts) == 4 and parts[1].isdigit() else None


@dataclass
class Bench:
    """What every run shares: arguments, the fleet's environment, the processes to count."""

    args: argparse.Namespace
    env: dict[str, str]
    bench_roots: set[int]
    runs: int = 0


def read_line(process: subprocess.Popen[str], prefix: str, timeout_s: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if line.startswith(prefix):
                return line
            if not line:
                break
        elif process.poll() is not None:
            break
    raise RuntimeError(f"the client said no {prefix!r} in {timeout_s:g} s")


def measured_run(
    bench: Bench,
    api_url: str,
    slots: int,
    watch_ports: list[int],
    owner: int | None,
    label: str,
    watchers: int,
) -> dict[str, Any]:
    """One scan watched by ``watchers`` watchers (module docstring: blockers, then the scan
    queued while they connect, then the owner's slot freed). ``owner`` is the pid of the
    instance that must run it, or None for any."""
    args = bench.args
    quiet = wait_for_quiet(args.quiet_cpus, args.quiet_wait_s) if args.quiet_wait_s > 0 else None
    blockers = [
        get_json(api_url, "/scan/start", "POST", {"provider": "polygon", "max_symbols": 50})[
            "scan_id"
        ]
        for _ in range(slots)
    ]

    def blockers_running() -> dict[str, dict[str, Any]] | None:
        scans = active(api_url)
        running = {b: scans[b] for b in blockers if scans.get(b, {}).get("status") == "running"}
        return running if len(running) == slots else None

    running = wait_for("the blockers to run", blockers_running, CLAIM_TIMEOUT_S)
    body = {
        "provider": "synthetic",
        "max_symbols": args.symbols,
        "bars": args.bars,
        "lookback_bars": args.bars,
    }
    bench.runs += 1
    scan_id = get_json(api_url, "/scan/start", "POST", {**body, "seed": bench.runs})["scan_id"]
    client = subprocess.Popen(
        [
            sys.executable, __file__, "--role", "client", "--scan-id", scan_id,
            "--watchers", str(watchers), "--ports", *map(str, watch_ports),
            "--connect-batch", str(args.connect_batch),
            "--ramp-timeout-s", str(args.ramp_timeout_s),
            "--run-timeout-s", str(args.run_timeout_s),
        ],
        stdout=subprocess.PIPE, text=True, env=bench.env,
    )  # fmt: skip
    try:
        connected = int(read_line(client, "CONNECTED", args.ramp_timeout_s + 30).split()[1])
        machine_before, wall_before = machine_cpu_seconds(), time.monotonic()
        bench_before = process_cpu_seconds(bench.bench_roots, {client.pid})
        chosen = next(
            (b for b, scan in running.items() if owner_pid(scan["instance"]) == owner),
            blockers[0],
        )
        get_json(api_url, f"/scan/cancel/{chosen}", "POST")
        scan = wait_for(
            "the scan to be claimed",
            lambda: active(api_url).get(scan_id, {}).get("instance"),
            CLAIM_TIMEOUT_S,
        )
        for blocker in blockers:
            if blocker != chosen:
                get_json(api_url, f"/scan/cancel/{blocker}", "POST")
        result_line = read_line(client, "{", args.run_timeout_s + 60)
        client.wait(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(timeout=10)
    machine_s, wall_s = machine_cpu_seconds() - machine_before, time.monotonic() - wall_before
    bench_s = process_cpu_seconds(bench.bench_roots, {client.pid}) - bench_before
    result = json.loads(result_line)
    metrics = wait_for(
        "the scan's results",
        lambda: stored_metrics(api_url, scan_id),
        CLAIM_TIMEOUT_S,
    )
    return {
        **result,
        "label": label,
        "connected_reported": connected,
        "owner_as_chosen": owner is None or owner_pid(scan) == owner,
        "scan_s": float(metrics.get("total_seconds", float("nan"))),
        "machine_busy": machine_s / wall_s,
        "others_busy": max(0.0, machine_s - bench_s - result["client_cpu_s"]) / wall_s,
        "others_before": quiet,
    }


# -- the two parts -----------------------------------------------------------------------


def fleet_part(bench: Bench, directory: Path) -> list[dict[str, Any]]:
    """Three instances; the same watchers on the two non-owners, then on the owner."""
    servers = []
    try:
        for name in "abc":
            server = Server(bench.env, directory / f"fleet-{name}.log")
            server.start()
            servers.append(server)
        a, b, c = servers
        assert a.process is not None
        rows = []
        for _ in range(bench.args.repeat):
            for label, ports in (("split over B+C", [b.port, c.port]), ("all on A", [a.port])):
                print(f"fleet: {bench.args.watchers} watchers {label} ...", file=sys.stderr)
                rows.append(
                    measured_run(bench, a.url, 3, ports, a.process.pid, label, bench.args.watchers)
                )
        return rows
    finally:
        for server in servers:
            server.stop()


@contextlib.contextmanager
def serve_processes(env: dict[str, str], processes: int, log: Path) -> Iterator[str]:
    """``technic serve --processes N`` on a free port; stopped with SIGTERM (then killed)."""
    port = _free_port()
    technic = Path(sys.executable).with_name("technic")
    with log.open("ab") as output:
        supervisor = subprocess.Popen(
            [str(technic), "serve", "--processes", str(processes)],
            env={**env, "PORT": str(port), "HOST": HOST},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://{HOST}:{port}"
    try:

        def ready() -> bool:
            if supervisor.poll() is not None:
                raise RuntimeError(f"technic serve --processes ended; see {log}")
            try:
                return bool(get_json(url, "/health"))
            except OSError:
                return False

        wait_for("technic serve --processes to answer", ready, START_TIMEOUT_S)
        yield url
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout=60)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(supervisor.pid, signal.SIGKILL)


def processes_part(bench: Bench, directory: Path) -> list[dict[str, Any]]:
    rows = []
    for _ in range(bench.args.repeat):
        for processes in (1, 2):
            label = f"--processes {processes}"
            print(
                f"processes: {bench.args.process_watchers} watchers, {label} ...", file=sys.stderr
            )
            env = {**bench.env, "MAX_WORKERS": "2"}
            with serve_processes(env, processes, directory / f"processes-{processes}.log") as url:
                port = int(url.rsplit(":", 1)[1])
                rows.append(
                    measured_run(
                        bench, url, processes, [port], None, label, bench.args.process_watchers
                    )
                )
    return rows


# -- output --------------------------------------------------------------------------------


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    header = (
        f"{'run':<16} {'watchers':>8} {'ramp s':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'frames/s':>9} {'deliv %':>7} {'terminal+1000':>14} {'scan s':>6} "
        f"{'busy':>5} {'others':>6} {'before':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        frames_per_s = row["frames"] / row["measured_s"] if row["measured_s"] > 0 else 0.0
        owner = "" if row["owner_as_chosen"] else " (owner not as chosen)"
        before = row["others_before"]
        print(
            f"{row['label']:<16} {row['connected']:>8} {row['ramp_s']:>6.1f} "
            f"{row['lag_p50_ms']:>7.0f} {row['lag_p99_ms']:>7.0f} {row['lag_max_ms']:>7.0f} "
            f"{frames_per_s:>9.0f} {100 * row['delivered_share']:>7.1f} "
            f"{row['complete']:>6}/{row['connected']:<7} {row['scan_s']:>6.1f} "
            f"{row['machine_busy']:>5.2f} {row['others_busy']:>6.2f} "
            f"{'-' if before is None else format(before, '.2f'):>6}{owner}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=["orchestrate", "client"], default="orchestrate")
    parser.add_argument("--parts", nargs="+", choices=["fleet", "processes"],
                        default=["fleet", "processes"])  # fmt: skip
    parser.add_argument("--watchers", type=int, default=10_000, help="fleet part")
    parser.add_argument(
        "--process-watchers", type=int, default=19_000,
        help="processes part (one process holds them all with --processes 1: under the "
        "open-file limit)",
    )  # fmt: skip
    parser.add_argument("--symbols", type=int, default=200_000)
    parser.add_argument("--bars", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--connect-batch", type=int, default=250)
    parser.add_argument("--ramp-timeout-s", type=float, default=180.0)
    parser.add_argument("--run-timeout-s", type=float, default=300.0)
    parser.add_argument(
        "--quiet-wait-s", type=float, default=60.0,
        help="before each run, wait up to this long for other processes to go quiet",
    )  # fmt: skip
    parser.add_argument("--quiet-cpus", type=float, default=0.3, help="what counts as quiet")
    parser.add_argument("--scan-id")
    parser.add_argument("--ports", type=int, nargs="+")
    args = parser.parse_args()

    if args.role == "client":
        import uvloop

        print(json.dumps(uvloop.run(run_client(args))), flush=True)
        return

    nofile = raise_nofile_limit()
    with (
        tempfile.TemporaryDirectory(prefix="bench-fleet-") as temp,
        database_url(Path(temp)) as (url, postmaster),
        running_redis(Path(temp) / "redis") as redis,
        silent_socket() as silent_url,
    ):
        env = server_env(
            url, Path(temp) / "data",
            REDIS_URL=redis.url, MAX_CONCURRENT_SCANS="1", MAX_WORKERS="1",
            MAX_SYMBOLS_CAP=str(max(args.symbols, 100_000)), MAX_CONNECTIONS="100000",
            POLYGON_API_KEY="bench", POLYGON_BASE_URL=silent_url,
        )  # fmt: skip
        roots = {os.getpid()} | ({postmaster} if postmaster else set())
        bench = Bench(args, env, roots)
        tables = []
        if "fleet" in args.parts:
            tables.append(
                ("fleet: three instances, scan owned by A", fleet_part(bench, Path(temp)))
            )
        if "processes" in args.parts:
            tables.append(
                ("one machine: technic serve --processes N", processes_part(bench, Path(temp)))
            )
    print(
        f"\nsynthetic scan {args.symbols} symbols x {args.bars} bars; {os.cpu_count()} CPUs "
        f"shared by PostgreSQL, Redis, the servers, their workers and the client; open-file "
        f"limit {nofile}"
    )
    for title, rows in tables:
        print_table(title, rows)
    print(
        "\nlag = client receive time - published_at (the owner's stamp), snapshots published "
        "after all watchers connected;\nframes/s = frames received / (first to last received); "
        "deliv % = frames / (snapshots published x watchers), the rest conflated;\n"
        "terminal+1000 = watchers whose last frame was the terminal state, closed 1000; "
        "scan s = the scan's own time;\nbusy = CPUs busy on the machine during the run "
        "(of 2), others = the part not spent by this benchmark's processes;\nbefore = CPUs busy "
        "in the 5 s before the run (it waits up to --quiet-wait-s for at most --quiet-cpus)."
    )


if __name__ == "__main__":
    main()
