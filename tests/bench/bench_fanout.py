"""Fan-out benchmark: N WebSocket watchers of one scan, server and clients in two processes.

Run:  .venv/bin/python tests/bench/bench_fanout.py [--watchers 1000 5000 10000]
      [--rate-hz 10] [--duration-s 12] [--mode direct|public] [--client aiohttp|raw]
      [--client-rcvbuf BYTES] [--gc-freeze] [--quiet-wait-s S --quiet-cpus C]

For each N the script starts a server process (aiohttp on uvloop, ``Hub`` and
``websocket_stream`` as the service uses them, on 127.0.0.1) and a client process that
opens N aiohttp WebSocket clients to ``/scan/ws/{id}`` in batches. When all are connected,
the server starts a simulated scan in a worker thread: a real ``MultiStageProgressTracker``
walked through the four stages at ``--rate-hz`` snapshots per second for ``--duration-s``,
bridged to the hub with ``call_soon_threadsafe`` as the job manager does, then a terminal
snapshot. Every client records ``receive time - published_at`` for every frame.

Printed per N: delivery lag p50 / p99 / max, frames delivered per second, the share of
(watcher, snapshot) pairs delivered (the rest were conflated for watchers that fell behind),
server CPU seconds during the scan, server RSS per connection, and whether every watcher
received the terminal state and a 1000 close; below the table, the age of the snapshot
when the server wrote it (the server's share of the lag), sweep passes, garbage-collector
pauses, and how busy the machine was with other processes during the run.

``--mode public`` sends every frame through aiohttp's public ``send_frame`` from each
watcher's task (``direct_write=False``), for comparison with the default direct sweep.
``--client raw`` replaces aiohttp's client by a bare asyncio protocol (no task or queue per
message): on two CPUs the aiohttp clients saturate their CPU before the server does, and
their lag is then their own queue. ``--gc-freeze`` calls ``gc.freeze()`` in the server once
all watchers are connected (a full collection over 10,000 connections' objects pauses the
loop for about a second here). ``--quiet-wait-s`` waits, bounded, for other processes on a
shared machine to go quiet before each run.

Every loop is bounded in count and time; the processes stop by themselves. Only loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"
TOPIC = "bench-scan"
PUBLISHED_AT_KEY = b'"published_at":'


def raise_nofile_limit() -> int:
    """Lift the soft open-file limit to the hard one; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1_048_576
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all processes, kernel included)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def rss_bytes(field: str = "VmRSS") -> int:
    """Current (VmRSS) or peak (VmHWM) resident set size from /proc."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


# -- server process ----------------------------------------------------------------------


def where_tasks_wait(limit: int = 5) -> dict[str, int]:
    """Diagnostics: how many tasks wait at which chain of coroutines (top ``limit`` chains)."""
    chains: dict[str, int] = {}
    for task in asyncio.all_tasks():
        names, awaited = [], task.get_coro()
        for _ in range(20):
            code = getattr(awaited, "cr_code", None) or getattr(awaited, "gi_code", None)
            if code is None:
                break
            names.append(code.co_qualname)
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        key = " > ".join(names) + (f" > {type(awaited).__name__}" if awaited is not None else "")
        chains[key] = chains.get(key, 0) + 1
    return dict(sorted(chains.items(), key=lambda item: -item[1])[:limit])


def simulate_scan(publish: Any, rate_hz: float, duration_s: float, stop: threading.Event) -> None:
    """A scan whose stages take their weight's share of ``duration_s``, one unit per tick."""
    from technic.engine.progress import SCAN_STAGES, MultiStageProgressTracker

    tracker = MultiStageProgressTracker(scan_id=TOPIC, on_emit=publish, min_interval_s=0.0)
    ticks = max(4, round(rate_hz * duration_s))
    interval_s = 1.0 / rate_hz
    tracker.start()
    deadline = time.monotonic()
    for name, weight in SCAN_STAGES:
        units = max(1, round(weight * ticks))
        tracker.start_stage(name, total=units)
        for _ in range(units):
            deadline += interval_s
            pause_s = deadline - time.monotonic()
            if pause_s > 0 and stop.wait(pause_s):
                tracker.finish("cancelled")
                return
            tracker.advance(name)
        tracker.complete_stage(name)
    tracker.finish("completed")


async def run_server(args: argparse.Namespace) -> None:
    from aiohttp import web
    from technic.server.hub import Hub
    from technic.server.streams import StreamStats, websocket_stream

    nofile = raise_nofile_limit()
    loop = asyncio.get_running_loop()
    gc_pauses: list[float] = []  # collections while the scan runs (until its terminal state)
    gc_started = [0.0]

    def on_gc(phase: str, details: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        elif "publish_start" in info and "publish_end" not in info:
            gc_pauses.append(time.perf_counter() - gc_started[0])
            if details["generation"] == 2:
                info["gc_full_runs"] = info.get("gc_full_runs", 0) + 1

    gc.callbacks.append(on_gc)
    hub = Hub()
    stats = StreamStats()
    send_ages = array("d")
    hub_sweep = hub._sweep

    def timed_sweep(state: Any, sweep_loop: Any) -> None:
        # Bench instrumentation only: how old the snapshot a sweep chunk writes is.
        if state.latest is not None and "publish_start" in info:
            send_ages.append(time.time() - state.latest.published_at)
        hub_sweep(state, sweep_loop)

    hub._sweep = timed_sweep  # type: ignore[method-assign]
    stopping = asyncio.Event()
    stop_thread = threading.Event()
    done = asyncio.Event()
    info: dict[str, Any] = {"nofile": nofile, "mode": args.mode}
    threads: list[threading.Thread] = []

    async def ws_route(request: web.Request) -> web.StreamResponse:
        return await websocket_stream(
            request, hub, request.match_info["id"], None, direct_write=args.mode == "direct",
            stats=stats,
        )  # fmt: skip

    def on_emit(snapshot: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(publish, snapshot)

    def publish(snapshot: dict[str, Any]) -> None:
        message = hub.publish(TOPIC, snapshot)
        if message is not None and message.terminal:
            info["terminal_seq"] = message.seq
            info["publish_end"] = time.time()
            info["cpu_at_terminal_s"] = cpu_seconds() - info["cpu_start"]
            done.set()

    async def start(request: web.Request) -> web.Response:
        if not threads:
            if args.gc_freeze:
                gc.freeze()  # the connections' objects leave the collector's working set
            info["watchers_connected"] = stats.open_websockets
            info["rss_connected"] = rss_bytes()
            info["cpu_start"] = cpu_seconds()
            info["publish_start"] = time.time()
            thread = threading.Thread(
                target=simulate_scan,
                args=(on_emit, args.rate_hz, args.duration_s, stop_thread),
                daemon=True,
            )
            threads.append(thread)
            thread.start()
        return web.json_response({"ok": True})

    async def report(request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(args.duration_s + 30):
                await done.wait()
        except TimeoutError:
            info["error"] = "no terminal snapshot in time"
        info["cpu_to_report_s"] = cpu_seconds() - info.get("cpu_start", 0.0)
        info["rss_peak"] = rss_bytes("VmHWM")
        info["rss_now"] = rss_bytes()
        hub_stats = hub.stats()
        info["published"] = hub_stats.published
        info["conflated"] = hub_stats.conflated
        info["delivered"] = hub_stats.delivered
        if send_ages:
            ordered = sorted(send_ages)
            info["send_age_p50_ms"] = 1e3 * ordered[len(ordered) // 2]
            info["send_age_p99_ms"] = 1e3 * ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)]
        info["gc_runs"] = len(gc_pauses)
        info["gc_max_ms"] = 1e3 * max(gc_pauses, default=0.0)
        info["sweeps"] = hub_stats.sweeps
        info["sweep_seconds"] = hub_stats.sweep_seconds
        info["ws_messages_sent"] = stats.ws_messages_sent
        info["ws_direct_writes"] = stats.ws_direct_writes
        for _ in range(100):  # the last closing handshakes may still be finishing
            if not stats.open_websockets:
                break
            await asyncio.sleep(0.1)
        info["open_websockets"] = stats.open_websockets
        if stats.open_websockets:
            info["stuck_tasks"] = where_tasks_wait()
        info["subscribers"] = hub_stats.subscribers
        return web.json_response(info)

    async def stop(request: web.Request) -> web.Response:
        stopping.set()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/scan/ws/{id}", ws_route)
    app.router.add_post("/bench/start", start)
    app.router.add_get("/bench/report", report)
    app.router.add_post("/bench/stop", stop)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, backlog=4096)
    await site.start()
    info["rss_baseline"] = rss_bytes()
    port = runner.addresses[0][1]
    print(f"PORT {port}", flush=True)
    try:
        async with asyncio.timeout(args.max_runtime_s):
            await stopping.wait()
    except TimeoutError:
        print("server: max runtime reached", file=sys.stderr)
    finally:
        stop_thread.set()
        hub.shutdown()
        await runner.cleanup()
        for thread in threads:
            thread.join(timeout=5)


# -- client process ----------------------------------------------------------------------


def published_at_of(payload: bytes) -> float | None:
    """A snapshot's ``published_at`` without parsing its JSON (the key is the last but one
    in the service's snapshots, followed by ``epoch``; the last in this bench's)."""
    at = payload.rfind(PUBLISHED_AT_KEY)
    if at < 0:
        return None
    at += len(PUBLISHED_AT_KEY)
    end = at
    while end < len(payload) and payload[end] not in b",}":
        end += 1
    return float(payload[at:end])


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client-to-server frame (clients must mask, RFC 6455 5.3); short payloads only."""
    mask = os.urandom(4)
    body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + body


class RawWatcher(asyncio.Protocol):
    """A minimal WebSocket client on a bare asyncio protocol (``--client raw``).

    No task and no queue per message: frames are parsed in ``data_received``. It exists to
    show what the server does when the load generator costs less than aiohttp's client.
    """

    def __init__(self, path: str, lags: array[float]) -> None:
        loop = asyncio.get_running_loop()
        self.path = path
        self.lags = lags
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.buffer = bytearray()
        self.frames = 0
        self.last: bytes | None = None
        self.last_at = 0.0
        self.close_code: int | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  (uvloop's is no subclass)
        key = base64.b64encode(os.urandom(16))
        transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (self.path.encode(), HOST.encode(), key)
        )

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(ConnectionError(bytes(buffer[:200]).decode()))
                return
            del buffer[: end + 4]
            self.upgraded.set_result(None)
        position, size = 0, len(buffer)
        while size - position >= 2:
            opcode, length, head = buffer[position] & 0x0F, buffer[position + 1] & 0x7F, 2
            if length == 126:
                if size - position < 4:
                    break
                length, head = int.from_bytes(buffer[position + 2 : position + 4], "big"), 4
            elif length == 127:
                if size - position < 10:
                    break
                length, head = int.from_bytes(buffer[position + 2 : position + 10], "big"), 10
            if size - position < head + length:
                break
            payload = bytes(buffer[position + head : position + head + length])
            position += head + length
            if opcode == 0x1:
                self.on_text(payload)
            elif opcode == 0x8:
                self.close_code = int.from_bytes(payload[:2], "big") if payload else None
                assert self.transport is not None
                self.transport.write(masked_frame(0x8, payload[:2]))
                self.transport.close()
            elif opcode == 0x9:
                assert self.transport is not None
                self.transport.write(masked_frame(0xA, payload))
        del buffer[:position]

    def on_text(self, payload: bytes) -> None:
        """One snapshot received; a subclass records what its benchmark needs instead."""
        self.last_at = time.time()
        published_at = published_at_of(payload)
        if published_at is not None:
            self.lags.append(self.last_at - published_at)
        self.frames += 1
        self.last = payload

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(exc or ConnectionError("closed during handshake"))
        if not self.done.done():
            self.done.set_result(None)


async def run_client(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp
    import numpy as np
    import orjson

    nofile = raise_nofile_limit()
    base = f"http://{HOST}:{args.port}"
    url = f"{base}/scan/ws/{TOPIC}"
    watchers = args.watchers
    lags = array("d")
    frames = [0] * watchers
    last_data: list[bytes | None] = [None] * watchers
    close_codes: list[int | None] = [None] * watchers
    last_at = [0.0] * watchers
    connect_failures = 0
    connected = 0
    all_connected = asyncio.Event()
    gate = asyncio.Semaphore(args.connect_batch)

    def make_socket(family: int, kind: int, proto: int) -> socket.socket:
        sock = socket.socket(family, kind, proto)
        if args.client_rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.client_rcvbuf)
        return sock

    connector = aiohttp.TCPConnector(
        limit=0,
        force_close=True,
        socket_factory=lambda addr: make_socket(addr[0], addr[1], addr[2]),
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    session = aiohttp.ClientSession(connector=connector, timeout=timeout)

    loop = asyncio.get_running_loop()
    path = f"/scan/ws/{TOPIC}"

    async def watch_raw(index: int) -> None:
        nonlocal connected, connect_failures
        watcher = None
        async with gate:
            for attempt in range(3):
                try:
                    sock = make_socket(socket.AF_INET, socket.SOCK_STREAM, 0)
                    sock.setblocking(False)
                    try:
                        await loop.sock_connect(sock, (HOST, args.port))
                    except OSError:
                        sock.close()
                        raise
                    _, watcher = await loop.create_connection(
                        lambda: RawWatcher(path, lags), sock=sock
                    )
                    async with asyncio.timeout(30):
                        await watcher.upgraded
                    break
                except (OSError, TimeoutError):
                    watcher = None
                    await asyncio.sleep(0.2 * (attempt + 1))
        if watcher is None:
            connect_failures += 1
        else:
            connected += 1
        if connected + connect_failures == watchers:
            all_connected.set()
        if watcher is None:
            return
        try:
            await watcher.done
        finally:
            frames[index] = watcher.frames
            last_data[index] = watcher.last
            last_at[index] = watcher.last_at
            close_codes[index] = watcher.close_code

    async def watch(index: int) -> None:
        nonlocal connected, connect_failures
        ws = None
        async with gate:
            for attempt in range(3):
                try:
                    ws = await session.ws_connect(
                        url, compress=0, decode_text=False, max_msg_size=1 << 20
                    )
                    break
                except (aiohttp.ClientError, OSError):
                    await asyncio.sleep(0.2 * (attempt + 1))
        if ws is None:
            connect_failures += 1
        else:
            connected += 1
        if connected + connect_failures == watchers:
            all_connected.set()
        if ws is None:
            return
        append, now = lags.append, time.time
        async for message in ws:
            data = message.data
            at = data.rfind(PUBLISHED_AT_KEY) + len(PUBLISHED_AT_KEY)
            received = last_at[index] = now()
            append(received - float(data[at : data.index(b"}", at)]))
            frames[index] += 1
            last_data[index] = data
        close_codes[index] = ws.close_code

    ramp_started = time.monotonic()
    watch_one = watch_raw if args.client == "raw" else watch
    tasks = [asyncio.create_task(watch_one(i)) for i in range(watchers)]
    try:
        async with asyncio.timeout(args.ramp_timeout_s):
            await all_connected.wait()
    except TimeoutError:
        pass
    ramp_s = time.monotonic() - ramp_started
    await asyncio.sleep(1.0)  # let the server settle before measuring its RSS
    cpu_before = cpu_seconds()
    machine_before, wall_before = machine_cpu_seconds(), time.monotonic()
    async with session.post(f"{base}/bench/start") as response:
        response.raise_for_status()
    _, pending = await asyncio.wait(tasks, timeout=args.duration_s + 60)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=10)
    client_cpu_s = cpu_seconds() - cpu_before
    machine_s, wall_s = machine_cpu_seconds() - machine_before, time.monotonic() - wall_before
    async with session.get(f"{base}/bench/report") as response:
        server = await response.json()
    async with session.post(f"{base}/bench/stop") as response:
        await response.read()
    await session.close()

    terminal_seq = server.get("terminal_seq")
    got_terminal = closed_1000 = complete = 0
    last_terminal_at = 0.0
    for data, code, at in zip(last_data, close_codes, last_at, strict=True):
        closed_1000 += code == 1000
        if data is None:
            continue
        snapshot = orjson.loads(data)
        if snapshot["status"] == "completed" and snapshot["seq"] == terminal_seq:
            got_terminal += 1
            complete += code == 1000
            last_terminal_at = max(last_terminal_at, at)
    values = np.frombuffer(lags, dtype=np.float64) if lags else np.zeros(1)
    publish_s = server.get("publish_end", 0.0) - server.get("publish_start", 0.0)
    total_frames = int(sum(frames))
    published = server.get("published", 0)
    return {
        "watchers": watchers,
        "connected": connected,
        "connect_failures": connect_failures,
        "ramp_s": ramp_s,
        "nofile": nofile,
        "lag_p50_ms": float(np.percentile(values, 50)) * 1e3,
        "lag_p99_ms": float(np.percentile(values, 99)) * 1e3,
        "lag_max_ms": float(values.max()) * 1e3,
        "frames": total_frames,
        "frames_per_s": total_frames / publish_s if publish_s > 0 else 0.0,
        "delivered_share": total_frames / (published * watchers) if published else 0.0,
        "published": published,
        "publish_s": publish_s,
        "got_terminal": got_terminal,
        "closed_1000": closed_1000,
        "close_codes": {str(code): close_codes.count(code) for code in set(close_codes)},
        "complete": complete,
        "terminal_spread_s": last_terminal_at - server.get("publish_end", 0.0),
        "client_cpu_s": client_cpu_s,
        "machine_cpu_s": machine_s,
        "wall_s": wall_s,
        "server": server,
    }


# -- orchestration -------------------------------------------------------------------------


def read_port(process: subprocess.Popen[str], timeout_s: float) -> int:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if line.startswith("PORT "):
                return int(line.split()[1])
            if not line:
                break
        if process.poll() is not None:
            break
    raise RuntimeError("server did not start")


def wait_for_quiet(max_busy_cpus: float, max_wait_s: float) -> float:
    """On a shared machine: wait (bounded) for other load to drop; returns the last reading."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before = machine_cpu_seconds()
        time.sleep(5.0)
        busy = (machine_cpu_seconds() - before) / 5.0
        if busy <= max_busy_cpus or time.monotonic() >= deadline:
            return busy


def run_one(args: argparse.Namespace, watchers: int) -> dict[str, Any]:
    script = str(Path(__file__).resolve())
    common = [
        "--rate-hz", str(args.rate_hz), "--duration-s", str(args.duration_s),
        "--mode", args.mode, *(["--gc-freeze"] if args.gc_freeze else []),
    ]  # fmt: skip
    budget_s = args.ramp_timeout_s + args.duration_s + 120
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, script, "--role", "server", "--max-runtime-s", str(budget_s), *common],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        port = read_port(server, 30)
        client = subprocess.run(
            [
                sys.executable, script, "--role", "client", "--port", str(port),
                "--watchers", str(watchers), "--connect-batch", str(args.connect_batch),
                "--ramp-timeout-s", str(args.ramp_timeout_s), "--client", args.client,
                "--client-rcvbuf", str(args.client_rcvbuf), *common,
            ],
            capture_output=True, text=True, timeout=budget_s, env=env,
        )  # fmt: skip
        if client.returncode != 0:
            raise RuntimeError(f"client failed:\n{client.stderr[-4000:]}")
        return json.loads(client.stdout.strip().splitlines()[-1])
    finally:
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nfan-out: one topic, {args.rate_hz:g} snapshots/s for {args.duration_s:g} s, "
        f"mode={args.mode}{', gc.freeze()' if args.gc_freeze else ''}, client={args.client}, "
        f"client SO_RCVBUF="
        f"{args.client_rcvbuf or 'default'}, {os.cpu_count()} CPUs shared by server and clients, "
        "loopback\n"
    )
    header = (
        f"{'watchers':>8} {'ramp s':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'frames/s':>9} {'deliv %':>7} {'srv CPU s':>9} {'srv CPU %':>9} "
        f"{'KiB/conn':>8} {'terminal':>13} {'cli CPU s':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        server = row["server"]
        publish_s = row["publish_s"] or float("nan")
        cpu_s = server.get("cpu_at_terminal_s", float("nan"))
        per_conn = (server["rss_connected"] - server["rss_baseline"]) / max(row["connected"], 1)
        print(
            f"{row['watchers']:>8} {row['ramp_s']:>7.1f} {row['lag_p50_ms']:>8.1f} "
            f"{row['lag_p99_ms']:>8.1f} {row['lag_max_ms']:>8.1f} {row['frames_per_s']:>9.0f} "
            f"{100 * row['delivered_share']:>7.1f} {cpu_s:>9.2f} {100 * cpu_s / publish_s:>9.0f} "
            f"{per_conn / 1024:>8.1f} {row['complete']:>6}/{row['watchers']:<6} "
            f"{row['client_cpu_s']:>9.2f}"
        )
    print(
        "\nlag = client receive time - published_at; deliv % = frames received / (snapshots "
        "published x watchers), the rest conflated;\nsrv CPU = server process CPU from scan "
        "start to terminal publish; KiB/conn = server RSS growth from idle to all connected "
        "/ watchers;\nterminal = watchers whose last frame was the terminal snapshot followed "
        "by a 1000 close."
    )
    for row in rows:
        server = row["server"]
        stuck = f", waiting at {server['stuck_tasks']}" if server.get("stuck_tasks") else ""
        print(
            f"  N={row['watchers']}: published {row['published']} in {row['publish_s']:.1f} s, "
            f"server sent {server['ws_messages_sent']} frames ({server['ws_direct_writes']} by "
            f"the sweep), conflated {server['conflated']}, {server['sweeps']} sweep passes "
            f"of {1e3 * server['sweep_seconds'] / max(server['sweeps'], 1):.0f} ms CPU on "
            f"average, {server['gc_runs']} GC runs during the scan ("
            f"{server.get('gc_full_runs', 0)} full; longest {server['gc_max_ms']:.0f} ms), "
            f"snapshot age when the server wrote it p50 "
            f"{server.get('send_age_p50_ms', float('nan')):.0f} ms p99 "
            f"{server.get('send_age_p99_ms', float('nan')):.0f} ms, server RSS peak "
            f"{server['rss_peak'] / 2**20:.0f} MiB, connect failures {row['connect_failures']}; "
            f"terminal frame received by {row['got_terminal']} (the last "
            f"{row['terminal_spread_s']:.2f} s after its publish), 1000 close by "
            f"{row['closed_1000']} (close codes {row['close_codes']}; still open on the server "
            f"when the client finished: {server['open_websockets']}{stuck}); "
            f"machine busy {row['machine_cpu_s'] / row['wall_s']:.2f} of {os.cpu_count()} CPUs, of "
            f"which other processes (not this bench) "
            f"{others_cpu(row) / row['wall_s']:.2f}"
        )


def others_cpu(row: dict[str, Any]) -> float:
    """Machine CPU seconds during the run not spent by the bench's server or client."""
    return max(0.0, row["machine_cpu_s"] - row["client_cpu_s"] - row["server"]["cpu_to_report_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    roles = ["orchestrate", "server", "client"]
    parser.add_argument("--role", choices=roles, default="orchestrate")
    parser.add_argument("--watchers", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--rate-hz", type=float, default=10.0)
    parser.add_argument("--duration-s", type=float, default=12.0)
    parser.add_argument("--mode", choices=["direct", "public"], default="direct")
    parser.add_argument("--client", choices=["aiohttp", "raw"], default="aiohttp")
    parser.add_argument(
        "--gc-freeze", action="store_true", help="server: gc.freeze() once all are connected"
    )
    parser.add_argument(
        "--client-rcvbuf", type=int, default=0, help="SO_RCVBUF of client sockets (0: OS default)"
    )
    parser.add_argument("--connect-batch", type=int, default=250)
    parser.add_argument("--ramp-timeout-s", type=float, default=120.0)
    parser.add_argument(
        "--quiet-wait-s", type=float, default=0.0, help="wait up to this long for a quiet machine"
    )
    parser.add_argument("--quiet-cpus", type=float, default=0.3, help="what counts as quiet")
    parser.add_argument("--port", type=int)
    parser.add_argument("--max-runtime-s", type=float, default=600.0)
    args = parser.parse_args()

    if args.role in ("server", "client"):
        import uvloop

        if args.role == "server":
            uvloop.run(run_server(args))
        else:
            args.watchers = args.watchers[0]
            result = uvloop.run(run_client(args))
            print(json.dumps(result), flush=True)
        return

    rows = []
    for watchers in args.watchers:
        if args.quiet_wait_s > 0:
            busy = wait_for_quiet(args.quiet_cpus, args.quiet_wait_s)
            print(f"other load before the run: {busy:.2f} CPUs", file=sys.stderr, flush=True)
        print(f"running {watchers} watchers ...", file=sys.stderr, flush=True)
        rows.append(run_one(args, watchers))
    print_table(rows, args)


if __name__ == "__main__":
    main()
