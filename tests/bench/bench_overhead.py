"""Service benchmark: what watchers cost a scan, and how fast progress can be polled.

Run: ``.venv/bin/python tests/bench/bench_overhead.py [--symbols 20000] [--runs 5]
[--watchers 1000] [--poll-requests 20000] [--poll-clients 64]``

It starts a real ``technic serve`` (embedded PostgreSQL in a temporary data directory,
unless ``DATABASE_URL`` is set) and drives it from this process over loopback:

1. overhead: the same synthetic scan ``--runs`` times with no watchers and ``--runs``
   times with ``--watchers`` WebSocket watchers connected for the whole scan (runs
   alternate, so drift on a shared machine hits both); the figure is the difference of
   the median scan times (``performance_metrics.total_seconds``, measured by the engine).
   The server runs one scan at a time; the watchers connect while their scan waits behind
   another, which is then cancelled. On a 2-core machine the watcher clients share the
   cores with the server and its workers, so their own cost is part of the figure;
2. polling: ``GET /scan/progress/{id}`` of a finished scan, ``--poll-requests`` requests
   from ``--poll-clients`` concurrent keep-alive clients: requests/s and p50/p99 latency.

Every loop is bounded in count and time; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_service import serve, wait_ready  # noqa: E402


async def start(session: aiohttp.ClientSession, url: str, body: dict) -> str:
    async with session.post(f"{url}/scan/start", json=body) as response:
        return (await response.json())["scan_id"]


async def run_scan(
    session: aiohttp.ClientSession, url: str, body: dict, watchers: int
) -> tuple[float, str]:
    """One scan; its watchers connect while it waits in the queue, so only the cost of
    serving them is measured, not that of a thousand handshakes."""
    blocker = await start(session, url, {**body, "max_symbols": 60_000})
    scan_id = await start(session, url, body)
    connected = 0
    all_connected = asyncio.Event()

    async def watch() -> None:
        nonlocal connected
        async with session.ws_connect(f"{url}/scan/ws/{scan_id}") as ws:
            connected += 1
            if connected == watchers:
                all_connected.set()
            async for _ in ws:
                pass

    tasks = [asyncio.create_task(watch()) for _ in range(watchers)]
    if watchers:
        await asyncio.wait_for(all_connected.wait(), 120)
    async with session.post(f"{url}/scan/cancel/{blocker}"):
        pass
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        async with session.get(f"{url}/scan/progress/{scan_id}") as response:
            progress = await response.json()
        if progress["status"] in ("completed", "failed", "cancelled"):
            break
        await asyncio.sleep(0.2)
    await asyncio.gather(*tasks)
    async with session.get(f"{url}/scan/results/{scan_id}?limit=1") as response:
        results = await response.json()
    return float(results["performance_metrics"]["total_seconds"]), scan_id


async def poll(url: str, scan_id: str, requests: int, clients: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    per_client = requests // clients
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            for _ in range(per_client):
                started = time.perf_counter()
                async with session.get(f"{url}/scan/progress/{scan_id}") as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, sorted(latencies)


async def bench(args: argparse.Namespace, url: str) -> None:
    body = {"provider": "synthetic", "max_symbols": args.symbols, "bars": 504}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await wait_ready(session, url)
        await run_scan(session, url, body, 0)  # warm the block cache and the workers
        alone: list[float] = []
        watched: list[float] = []
        scan_id = ""
        for _ in range(args.runs):
            seconds, scan_id = await run_scan(session, url, body, 0)
            alone.append(seconds)
            seconds, _ = await run_scan(session, url, body, args.watchers)
            watched.append(seconds)
    print(f"scan: synthetic {args.symbols} symbols x 504 bars, {args.runs} runs each, warm cache")
    print(f"  no watchers:        median {statistics.median(alone):.3f} s  {alone}")
    print(f"  {args.watchers} watchers:     median {statistics.median(watched):.3f} s")
    overhead = statistics.median(watched) / statistics.median(alone) - 1
    print(f"  overhead of {args.watchers} watchers: {overhead:+.1%}")
    rate, latencies = await poll(url, scan_id, args.poll_requests, args.poll_clients)
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    print(
        f"GET /scan/progress ({args.poll_clients} clients, {len(latencies)} requests): "
        f"{rate:,.0f} req/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--symbols", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--poll-requests", type=int, default=20_000)
    parser.add_argument("--poll-clients", type=int, default=64)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with serve() as url:
        asyncio.run(bench(args, url))


if __name__ == "__main__":
    main()
