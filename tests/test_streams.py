"""WebSocket and SSE streams over real sockets on 127.0.0.1, fed by a real tracker."""

from __future__ import annotations

import asyncio
import base64
import itertools
import math
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType, web
from technic.engine.progress import SCAN_STAGES, MultiStageProgressTracker
from technic.server.cursor import Cursor
from technic.server.hub import Hub
from technic.server.requests import RequestError, parse_cursor
from technic.server.streams import StreamStats, sse_stream, websocket_stream

STAGE_WEIGHTS = dict(SCAN_STAGES)


def make_app(
    hub: Hub, stats: StreamStats, *, sse_heartbeat_s: float = 15.0, direct_write: bool = True
) -> web.Application:
    """What the real routes do around the two handler cores: parse (with the parser the
    routes use), then delegate."""

    async def ws_route(request: web.Request) -> web.StreamResponse:
        try:
            since = parse_cursor(request.query.get("since"), "since")
        except RequestError as error:
            raise web.HTTPBadRequest(text=error.message) from None
        return await websocket_stream(
            request, hub, request.match_info["id"], since, direct_write=direct_write, stats=stats
        )

    async def sse_route(request: web.Request) -> web.StreamResponse:
        raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        try:
            last_event_id = parse_cursor(raw, "Last-Event-ID")
        except RequestError as error:
            raise web.HTTPBadRequest(text=error.message) from None
        return await sse_stream(
            request,
            hub,
            request.match_info["id"],
            last_event_id,
            heartbeat_s=sse_heartbeat_s,
            named_events=request.query.get("events") == "named",
            stats=stats,
        )

    app = web.Application()
    app.router.add_get("/scan/ws/{id}", ws_route)
    app.router.add_get("/scan/stream/{id}", sse_route)
    return app


@asynccontextmanager
async def serve(app: web.Application, hub: Hub) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        hub.shutdown()  # what the app's on_shutdown does: streams end, then the server stops
        await runner.cleanup()


class Scan:
    """A real tracker stepping through the four stages, publishing to the hub."""

    def __init__(self, hub: Hub, scan_id: str, totals: tuple[int, ...] = (2, 8, 20, 2)) -> None:
        self.tracker = MultiStageProgressTracker(
            scan_id=scan_id,
            on_emit=lambda snapshot: hub.publish(scan_id, snapshot),
            min_interval_s=0.0,
        )
        self.totals = totals

    async def run(self, pause_s: float = 0.001, status: str = "completed") -> None:
        # A pause after every emit lets watchers read it: two emits in one loop iteration
        # are conflated for a watcher that is not written to directly (SSE), by design.
        tracker = self.tracker
        if tracker.status == "pending":
            tracker.start()
            await asyncio.sleep(pause_s)
        for (name, _), total in zip(SCAN_STAGES, self.totals, strict=True):
            if tracker.snapshot()["stages"][name]["status"] == "pending":
                tracker.start_stage(name, total=total)
                await asyncio.sleep(pause_s)
            while tracker.snapshot()["stages"][name]["current"] < total:
                tracker.advance(name)
                await asyncio.sleep(pause_s)
            tracker.complete_stage(name)
            await asyncio.sleep(pause_s)
        tracker.finish(status)  # type: ignore[arg-type]

    @property
    def seq(self) -> int:
        return int(self.tracker.snapshot()["seq"])


def check_progression(snapshots: list[dict[str, Any]]) -> None:
    """Seq rises, overall progress never falls, is the weighted sum, and ends at 100."""
    assert snapshots
    for earlier, later in itertools.pairwise(snapshots):
        assert later["seq"] > earlier["seq"]
        assert later["overall_progress"] >= earlier["overall_progress"] - 1e-9
    for snapshot in snapshots:
        weighted = sum(
            STAGE_WEIGHTS[name] * stage["progress"] for name, stage in snapshot["stages"].items()
        )
        assert math.isclose(snapshot["overall_progress"], weighted, abs_tol=1e-9)
        assert isinstance(snapshot["published_at"], float)
    assert snapshots[-1]["status"] == "completed"
    assert math.isclose(snapshots[-1]["overall_progress"], 100.0)


async def read_ws(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[dict[str, Any]], Any]:
    """Every snapshot until the server closes; returns them and the close code."""
    snapshots = []
    async with asyncio.timeout(10):
        async for message in ws:
            assert message.type is WSMsgType.TEXT
            snapshots.append(orjson.loads(message.data))
    return snapshots, ws.close_code


@pytest.mark.parametrize("direct_write", [True, False], ids=["sweep-writes", "public-api"])
async def test_websocket_watchers_follow_a_scan_to_completion_then_close_1000(
    direct_write: bool,
) -> None:
    hub, stats = Hub(), StreamStats()
    scan = Scan(hub, "scan-1")
    scan.tracker.start()
    app = make_app(hub, stats, direct_write=direct_write)
    async with serve(app, hub) as base, aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(f"{base}/scan/ws/scan-1") for _ in range(3)]
        firsts = [orjson.loads(await ws.receive_str(timeout=5)) for ws in sockets]
        assert [first["seq"] for first in firsts] == [1, 1, 1]  # the retained state, at once
        readers = [asyncio.create_task(read_ws(ws)) for ws in sockets]
        await scan.run()
        for first, reader in zip(firsts, readers, strict=True):
            snapshots, close_code = await reader
            snapshots.insert(0, first)
            check_progression(snapshots)
            assert [s["seq"] for s in snapshots] == list(range(1, scan.seq + 1))
            assert close_code == 1000
        assert stats.ws_messages_sent == 3 * scan.seq
        # With direct writes the publish sweep writes nearly every frame itself.
        direct = stats.ws_direct_writes
        assert direct > 2 * scan.seq if direct_write else direct == 0
    assert stats.open_websockets == 0 and stats.websockets_opened == 3


async def test_websocket_since_resumes_after_what_the_client_has() -> None:
    hub, stats = Hub(), StreamStats()
    scan = Scan(hub, "scan-2")
    tracker = scan.tracker
    tracker.start()
    tracker.start_stage("universe_loading", total=4)
    tracker.advance("universe_loading")
    latest = scan.seq  # 3
    async with serve(make_app(hub, stats), hub) as base, aiohttp.ClientSession() as session:
        caught_up = await session.ws_connect(f"{base}/scan/ws/scan-2?since={latest}")
        with pytest.raises(asyncio.TimeoutError):
            await caught_up.receive(timeout=0.1)
        behind = await session.ws_connect(f"{base}/scan/ws/scan-2?since=1")
        assert orjson.loads(await behind.receive_str(timeout=5))["seq"] == latest
        tracker.advance("universe_loading")
        assert orjson.loads(await caught_up.receive_str(timeout=5))["seq"] == latest + 1
        assert orjson.loads(await behind.receive_str(timeout=5))["seq"] == latest + 1
        await behind.close()
        await scan.run()
        snapshots, close_code = await read_ws(caught_up)
        check_progression(snapshots)
        assert close_code == 1000
        finished = await session.ws_connect(f"{base}/scan/ws/scan-2?since={scan.seq}")
        assert await read_ws(finished) == ([], 1000)  # nothing new: closed at once
        late = await session.ws_connect(f"{base}/scan/ws/scan-2")
        snapshots, close_code = await read_ws(late)
        assert [s["status"] for s in snapshots] == ["completed"] and close_code == 1000
        bad = await session.get(f"{base}/scan/ws/scan-2?since=-1")
        assert bad.status == 400


async def test_websocket_shutdown_closes_with_1001() -> None:
    hub, stats = Hub(), StreamStats()
    hub.publish("scan-3", {"scan_id": "scan-3", "status": "running", "seq": 1})
    async with serve(make_app(hub, stats), hub) as base, aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{base}/scan/ws/scan-3")
        assert orjson.loads(await ws.receive_str(timeout=5))["seq"] == 1
        hub.shutdown()
        message = await ws.receive(timeout=5)
        assert message.type is WSMsgType.CLOSE
        assert message.data == 1001 and message.extra == "server shutting down"
    assert stats.open_websockets == 0


async def test_client_leaving_ends_its_stream_on_the_server() -> None:
    hub, stats = Hub(), StreamStats()
    hub.publish("scan-4", {"scan_id": "scan-4", "status": "running", "seq": 1})
    async with serve(make_app(hub, stats), hub) as base, aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{base}/scan/ws/scan-4")
        await ws.receive_str(timeout=5)
        await ws.send_str("ignored")
        await ws.close()
        async with asyncio.timeout(5):
            while stats.open_websockets or hub.stats().subscribers:
                await asyncio.sleep(0.01)


# -- a watcher that never reads ------------------------------------------------------------


async def open_stalled_websocket(base: str, path: str) -> socket.socket:
    """A raw WebSocket client with a tiny receive buffer that stops reading after 101."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += await loop.sock_recv(sock, 1)  # byte by byte: leave the frames unread
    assert response.startswith(b"HTTP/1.1 101")
    return sock


async def read_raw_frames(sock: socket.socket) -> tuple[list[bytes], int | None]:
    """Server frames (unmasked) until a close frame; text payloads and the close code."""
    loop = asyncio.get_running_loop()
    buffer = b""
    texts: list[bytes] = []

    async def need(count: int) -> None:
        nonlocal buffer
        while len(buffer) < count:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                raise ConnectionError("closed before a close frame")
            buffer += chunk

    while True:
        await need(2)
        opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
        if length == 126:
            await need(4)
            length, offset = struct.unpack("!H", buffer[2:4])[0], 4
        elif length == 127:
            await need(10)
            length, offset = struct.unpack("!Q", buffer[2:10])[0], 10
        await need(offset + length)
        payload, buffer = buffer[offset : offset + length], buffer[offset + length :]
        if opcode == 0x1:
            texts.append(payload)
        elif opcode == 0x8:
            return texts, struct.unpack("!H", payload[:2])[0] if payload else None


async def test_stalled_watcher_neither_delays_others_nor_misses_the_terminal_state() -> None:
    hub, stats = Hub(), StreamStats()
    scan = Scan(hub, "scan-5", totals=(4, 40, 200, 4))
    scan.tracker.start()
    async with serve(make_app(hub, stats), hub) as base, aiohttp.ClientSession() as session:
        stalled = await open_stalled_websocket(base, "/scan/ws/scan-5")
        try:
            healthy = [await session.ws_connect(f"{base}/scan/ws/scan-5") for _ in range(2)]
            firsts = [orjson.loads(await ws.receive_str(timeout=5)) for ws in healthy]
            readers = [asyncio.create_task(read_ws(ws)) for ws in healthy]
            await scan.run(pause_s=0.0005)
            published = scan.seq
            for first, reader in zip(firsts, readers, strict=True):
                snapshots, close_code = await reader
                snapshots.insert(0, first)
                assert [s["seq"] for s in snapshots] == list(range(1, published + 1))
                assert close_code == 1000
            hub_stats = hub.stats()
            assert hub_stats.conflated > 0  # the stalled one got no backlog
            assert hub_stats.subscribers == 1  # it still holds the terminal state
            # Now it reads: a few early frames, then straight to the final state.
            async with asyncio.timeout(10):
                texts, close_code = await read_raw_frames(stalled)
            statuses = [orjson.loads(text)["status"] for text in texts]
            assert statuses[-1] == "completed" and close_code == 1000
            # What sat in socket buffers (a few KiB each side), then the newest: no backlog.
            assert len(texts) <= 40 < published
        finally:
            stalled.close()


# -- Server-Sent Events ----------------------------------------------------------------------


async def read_sse(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """The raw event stream parsed by hand: one dict per block, comments under ':'."""
    blocks: list[dict[str, Any]] = []
    block: dict[str, Any] = {}
    async with asyncio.timeout(10):
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line == "":
                if block:
                    blocks.append(block)
                block = {}
                continue
            field, _, value = line.partition(":")
            block[field] = value.removeprefix(" ")
    assert not block, "stream ended inside an event"
    return blocks


def events_of(blocks: list[dict[str, Any]]) -> list[tuple[int, str | None, dict[str, Any]]]:
    """(seq, event name, snapshot) per event; each id is the cursor of its snapshot."""
    events = []
    for block in blocks:
        if "data" in block:
            snapshot = orjson.loads(block["data"])
            assert Cursor.parse(block["id"]) == Cursor(snapshot["epoch"], snapshot["seq"])
            events.append((snapshot["seq"], block.get("event"), snapshot))
    return events


async def test_sse_stream_follows_a_scan_and_ends_after_the_terminal_event() -> None:
    hub, stats = Hub(), StreamStats()
    scan = Scan(hub, "scan-6")
    scan.tracker.start()
    async with serve(make_app(hub, stats), hub) as base, aiohttp.ClientSession() as session:
        default = await session.get(f"{base}/scan/stream/scan-6")
        named = await session.get(f"{base}/scan/stream/scan-6?events=named")
        for response in (default, named):
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream"
            assert response.headers["Cache-Control"] == "no-cache"
            assert response.headers["X-Accel-Buffering"] == "no"
            assert response.headers["Connection"] == "close"  # see server/streams.py
            assert (await response.content.readline()) == b"retry: 2000\n"
            assert (await response.content.readline()) == b"\n"
        readers = [asyncio.create_task(read_sse(r)) for r in (default, named)]
        await asyncio.sleep(0.05)
        await scan.run()
        default_events = events_of(await readers[0])
        named_events = events_of(await readers[1])
    total = scan.seq
    # Default: every snapshot unnamed (EventSource.onmessage sees them all, including the
    # final one), then the terminal snapshot once more as a named "completed" event.
    assert [e[0] for e in default_events] == [*range(1, total + 1), total]
    assert [e[1] for e in default_events] == [None] * total + ["completed"]
    check_progression([e[2] for e in default_events[:-1]])
    assert default_events[-1][2] == default_events[-2][2]
    # ?events=named: the format.
    assert [e[0] for e in named_events] == list(range(1, total + 1))
    assert [e[1] for e in named_events] == ["progress"] * (total - 1) + ["completed"]
    check_progression([e[2] for e in named_events])
    assert stats.open_sse == 0 and stats.sse_opened == 2


@pytest.mark.parametrize(
    "how",
    [
        lambda cursor: ("", {"Last-Event-ID": cursor}),
        lambda cursor: (f"?last_event_id={cursor}", {}),
    ],
    ids=["header", "query"],
)
async def test_sse_resumes_after_the_last_event_id(
    how: Callable[[str], tuple[str, dict[str, str]]],
) -> None:
    hub, stats = Hub(), StreamStats()
    scan = Scan(hub, "scan-7")
    tracker = scan.tracker
    tracker.start()
    tracker.start_stage("universe_loading", total=2)
    seen = scan.seq
    async with serve(make_app(hub, stats), hub) as base, aiohttp.ClientSession() as session:
        epoch = hub.latest("scan-7")["epoch"]
        query, headers = how(f"{epoch}.{seen}")
        response = await session.get(f"{base}/scan/stream/scan-7{query}", headers=headers)
        reader = asyncio.create_task(read_sse(response))
        await asyncio.sleep(0.05)
        await scan.run()
        events = events_of(await reader)
        assert events[0][0] == seen + 1  # nothing the client already had
        assert [e[0] for e in events[:-1]] == list(range(seen + 1, scan.seq + 1))
        # Reconnecting after the end: 204 tells EventSource to stop reconnecting.
        query, headers = how(f"{epoch}.{scan.seq}")
        again = await session.get(f"{base}/scan/stream/scan-7{query}", headers=headers)
        assert again.status == 204
        query, headers = how(f"{epoch}.{scan.seq - 1}")
        last = await session.get(f"{base}/scan/stream/scan-7{query}", headers=headers)
        events = events_of(await read_sse(last))
        assert [(e[0], e[1]) for e in events] == [(scan.seq, None), (scan.seq, "completed")]


async def test_a_cursor_of_another_stream_gets_the_current_snapshot() -> None:
    """After a restart seq starts again at 1: a cursor from before names nothing here."""
    hub, stats = Hub(), StreamStats()
    for seq in (1, 2, 3):
        hub.publish("scan-9", {"scan_id": "scan-9", "status": "running", "seq": seq})
    epoch = hub.latest("scan-9")["epoch"]
    foreign = ["0ld3p0c4.2", "0ld3p0c4.82", "82"]  # another epoch; a bare seq not sent here
    async with serve(make_app(hub, stats), hub) as base, aiohttp.ClientSession() as session:
        for cursor in foreign:
            ws = await session.ws_connect(f"{base}/scan/ws/scan-9?since={cursor}")
            assert orjson.loads(await ws.receive_str(timeout=5))["seq"] == 3, cursor
            await ws.close()
        own = await session.ws_connect(f"{base}/scan/ws/scan-9?since={epoch}.3")
        with pytest.raises(asyncio.TimeoutError):
            await own.receive(timeout=0.1)
        await own.close()
        hub.publish("scan-9", {"scan_id": "scan-9", "status": "interrupted", "seq": 4})
        for cursor in foreign:
            response = await session.get(
                f"{base}/scan/stream/scan-9", headers={"Last-Event-ID": cursor}
            )
            assert response.status == 200, cursor
            events = events_of(await read_sse(response))
            assert [(e[0], e[1]) for e in events] == [(4, None), (4, "interrupted")]
        done = await session.get(f"{base}/scan/stream/scan-9?last_event_id={epoch}.4")
        assert done.status == 204


async def test_sse_sends_heartbeats_when_idle_and_ends_on_shutdown() -> None:
    hub, stats = Hub(), StreamStats()
    hub.publish("scan-8", {"scan_id": "scan-8", "status": "running", "seq": 1})
    app = make_app(hub, stats, sse_heartbeat_s=0.02)
    async with serve(app, hub) as base, aiohttp.ClientSession() as session:
        response = await session.get(f"{base}/scan/stream/scan-8")
        heartbeats = 0
        async with asyncio.timeout(5):
            while heartbeats < 3:
                line = await response.content.readline()
                heartbeats += line == b": heartbeat\n"
        assert stats.sse_heartbeats_sent >= 3
        reader = asyncio.create_task(read_sse(response))
        hub.shutdown()
        blocks = await reader  # the stream ends
        assert all(set(block) == {""} for block in blocks)  # only heartbeat comments
        bad = await session.get(f"{base}/scan/stream/scan-8?last_event_id=x")
        assert bad.status == 400
    assert stats.open_sse == 0


def test_parse_cursor_is_what_the_routes_use() -> None:
    assert parse_cursor(None, "since") is None
    assert parse_cursor("", "since") is None
    assert parse_cursor(" 42 ", "since") == Cursor(None, 42)
    assert parse_cursor("3fa9c2d1.42", "since") == Cursor("3fa9c2d1", 42)
    for bad in ("-1", "1.5.2", "abc", "٣", "a.b"):
        with pytest.raises(RequestError) as error:
            parse_cursor(bad, "Last-Event-ID")
        assert error.value.field == "Last-Event-ID" and error.value.status == 400
