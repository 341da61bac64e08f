"""WebSocket and Server-Sent-Events handlers' cores: a hub subscription written to a socket.

Both take a request the route has already validated (scan id known, access checked, resume
cursor parsed) and stream one topic of the :class:`~server.hub.Hub` until its terminal
snapshot, the client leaving, or the hub shutting down.

WebSocket (``GET /scan/ws/{id}?since=EPOCH.SEQ``)
    Each snapshot is one TEXT frame holding the JSON (the seed's page does
    ``JSON.parse(event.data)``; a BINARY frame would arrive as a Blob). The retained
    snapshot comes first unless the ``since`` cursor covers it (a cursor of another stream
    of the scan, e.g. from before a restart, covers nothing: ``server/cursor.py``); after
    the terminal one the server closes with 1000; on hub shutdown with 1001 "server shutting
    down". permessage-deflate is off: the messages are small, and compressing would make
    every frame different per watcher. A receive loop runs all along, so pings, pongs and
    the client's close are handled; what the client sends is ignored. To close, the server
    stops that loop first: aiohttp's ``close()`` then waits for the client's close frame
    before closing the socket, whereas closing while another task is reading makes it drop
    the connection at once, and a client that had not answered yet sees 1006 instead of 1000
    (seen in ``tests/bench/bench_fanout.py`` with thousands of watchers). After the terminal
    snapshot the closing handshakes wait until the sweep has reached every watcher.

    Fan-out: server frames are not masked, so the hub encodes each message's frame once
    and the publish sweep writes those same bytes to every watcher's transport, with no
    task switch per watcher (:meth:`_WebSocketWatcher.offer`). That is only done while
    the transport has nothing buffered, i.e. the kernel took everything so far; otherwise
    the message waits in the watcher's one-slot mailbox and the watcher's own task waits
    for the transport to drain and then sends the newest message through aiohttp's
    public ``send_frame``. Measured with 1,000 watchers: about 19 us of server CPU per
    frame this way against 31 us through ``send_frame`` from each watcher's task, of
    which about 16 us is the kernel's loopback send on the 2-CPU test machine.

Backlog (both handlers). Staleness hides in buffers, so both are kept small. The
transport pauses as soon as anything is left in it (write-buffer high-water mark 0), so a
writer that waits for the drain writes the newest snapshot, not the one it had when it
started waiting. And ``SO_SNDBUF`` is set to ``send_buffer_bytes`` (4 KiB by default,
which Linux doubles; about seven snapshots): on loopback Linux gives an accepted socket
a send buffer of about 4 MB, thousands of snapshots, minutes of backlog before the
transport would notice anything. A watcher that falls behind therefore gets the newest
state within a few snapshots instead of replaying a stale backlog, and costs the
server a few KiB, never more.

SSE (``GET /scan/stream/{id}``, resume from ``Last-Event-ID`` or ``?last_event_id=``)
    ``retry:`` first, then one event per snapshot with ``id:`` = the cursor ``EPOCH.SEQ``,
    a ``: heartbeat`` comment after ``heartbeat_s`` of silence, and the end of the response
    after the terminal event. A client resuming at the terminal snapshot of a finished
    scan's stream gets 204 No Content, which is how a server tells ``EventSource`` to stop
    reconnecting (otherwise it would reconnect every ``retry`` ms forever); a cursor of
    another stream gets the current snapshot instead, so a watcher whose scan was
    interrupted by a restart learns it.

    The response says ``Connection: close``, and the connection closes after the stream.
    Its socket was tuned for streaming (a send buffer of a few KiB, which also turns off
    the kernel's buffer autotuning for good, and a write-buffer high-water mark of 0):
    reused for the client's next request, a large body such as a CSV export would crawl
    through it. ``EventSource`` opens a new connection for each reconnection anyway, and a
    pooling client (aiohttp, requests, httpx) told ``close`` up front does not put the
    connection back in its pool, whereas one told ``keep-alive`` would, and its next
    request would fail on the closed socket.

    Event names. The issue names events (``progress``, ``completed``, ``failed``,
    ``cancelled``, ``interrupted``); the seed's page listens with
    ``eventSource.onmessage``, which fires only for events without an ``event:`` field.
    Naming every event would silently break that page; naming none would take away the
    terminal event a client wants in order to call ``eventSource.close()``. So by default
    (``named_events=False``) every snapshot is an unnamed event, and the terminal snapshot
    is sent unnamed (so ``onmessage`` sees the final state) and then once more named
    after its status with the same id (so ``addEventListener("completed", ...)`` fires).
    A client that wants the issue's format exactly, ``event: progress`` on every
    snapshot, asks for it with ``?events=named`` (the route passes ``named_events=True``).

aiohttp detail relied on: writing whole frames to ``request.transport`` next to aiohttp's
own ``WebSocketWriter`` is safe because, with compression off, that writer also writes
each frame with synchronous ``transport.write`` calls and keeps no buffer of its own. It is
confined to :meth:`_WebSocketWatcher.offer`; ``direct_write=False`` uses only the public
API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.abc import AbstractStreamWriter
from technic.server.cursor import Cursor
from technic.server.hub import Hub, Message, Subscription

log = logging.getLogger(__name__)

# The kernel send buffer asked for per stream socket (Linux allocates twice this).
SEND_BUFFER_BYTES = 4 * 1024


@dataclass(slots=True)
class StreamStats:
    """Counters of the stream handlers for ``/metrics``: open now, and totals since start.

    Each application has its own (``server.app``), read by ``server.metrics`` on scrape.

    ``ws_direct_writes`` is the part of ``ws_messages_sent`` written by the publish sweep
    itself; the rest went through a watcher's own task (first snapshot, slow watchers).
    """

    open_websockets: int = 0
    open_sse: int = 0
    websockets_opened: int = 0
    sse_opened: int = 0
    ws_messages_sent: int = 0
    ws_direct_writes: int = 0
    sse_messages_sent: int = 0
    sse_heartbeats_sent: int = 0


# -- WebSocket -------------------------------------------------------------------------------


class _WebSocketWatcher:
    """One WebSocket watcher: the sweep's direct writer and the watcher's own pump."""

    __slots__ = ("stats", "subscription", "transport", "writer", "ws")

    def __init__(
        self,
        ws: web.WebSocketResponse,
        writer: AbstractStreamWriter,
        transport: asyncio.Transport | None,
        stats: StreamStats,
    ) -> None:
        self.ws = ws
        self.writer = writer
        self.transport = transport
        self.stats = stats
        self.subscription: Subscription | None = None

    def offer(self, message: Message) -> bool:
        """Write the shared frame now if the transport keeps up; called by the hub's sweep.

        The one place that writes under aiohttp's WebSocketResponse: a complete frame,
        byte-identical for every watcher, straight to the transport (see module docstring).
        ``ws.closed`` turns true before aiohttp writes a close frame, so no data frame
        follows one.
        """
        transport = self.transport
        if (
            self.ws.closed
            or transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size()
        ):
            return False
        transport.write(message.ws_frame())
        stats = self.stats
        stats.ws_messages_sent += 1
        stats.ws_direct_writes += 1
        return True

    async def pump(self) -> tuple[WSCloseCode, bytes] | None:
        """Send what the sweep could not; the close to send when the topic ends, or None."""
        ws, subscription, stats = self.ws, self.subscription, self.stats
        assert subscription is not None
        try:
            async for message in subscription:
                await self.writer.drain()  # returns at once unless the transport is paused
                message = subscription.refresh(message)  # newer while we waited?
                if ws.closed:
                    return None  # closing: no data frame may follow the close frame
                await ws.send_frame(message.data, WSMsgType.TEXT)
                stats.ws_messages_sent += 1
        except ConnectionError:
            return None  # the client went away; the receive loop sees it too
        reason = subscription.end_reason
        if reason == "unsubscribed" or ws.closed:
            return None
        if reason == "shutdown":
            return WSCloseCode.GOING_AWAY, b"server shutting down"
        if reason == "terminal":
            # Everyone gets the final state first; then the costlier closing handshakes.
            await subscription.settled()
        return WSCloseCode.OK, b""


async def _receive_until_closed(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) what the client sends, so pings, pongs and its close are handled."""
    async for _ in ws:
        pass


async def websocket_stream(
    request: web.Request,
    hub: Hub,
    topic: str,
    since: Cursor | None,
    *,
    heartbeat_s: float = 20.0,
    max_msg_size: int = 4096,
    close_timeout_s: float = 30.0,
    send_buffer_bytes: int | None = SEND_BUFFER_BYTES,
    direct_write: bool = True,
    stats: StreamStats,
) -> web.WebSocketResponse:
    """Stream ``topic`` over a WebSocket until its terminal snapshot, then close with 1000.

    ``close_timeout_s`` bounds the closing handshake, including the wait for a slow client
    to take the last frames (the heartbeat no longer runs then): a client that reads
    nothing for that long is dropped. ``direct_write=False`` sends every frame through
    aiohttp's public API from the watcher's task (slower fan-out; kept as the fallback
    and for comparison).
    """
    ws = web.WebSocketResponse(
        heartbeat=heartbeat_s,
        compress=False,
        max_msg_size=max_msg_size,
        timeout=close_timeout_s,
    )
    writer = await ws.prepare(request)
    transport = request.transport
    _limit_backlog(transport, send_buffer_bytes)
    watcher = _WebSocketWatcher(ws, writer, transport, stats)
    subscription = hub.subscribe(
        topic, hub.resume_seq(topic, since), sink=watcher.offer if direct_write else None
    )
    watcher.subscription = subscription
    stats.open_websockets += 1
    stats.websockets_opened += 1
    pump = asyncio.create_task(watcher.pump())
    reader = asyncio.create_task(_receive_until_closed(ws))
    try:
        await asyncio.wait((pump, reader), return_when=asyncio.FIRST_COMPLETED)
        if pump.done() and not pump.cancelled() and not pump.exception() and not ws.closed:
            close = pump.result()
            if close is not None:
                # Stop reading first: aiohttp's close() then waits for the client's close
                # frame before it closes the socket (closing while another task reads would
                # drop the connection at once, and the client could not answer its close).
                reader.cancel()
                await asyncio.wait([reader])
                try:
                    async with asyncio.timeout(close_timeout_s):
                        await ws.close(code=close[0], message=close[1])
                except TimeoutError:
                    _abort(transport)  # a client that reads nothing cannot take a close frame
    finally:
        subscription.close()
        pump.cancel()
        reader.cancel()
        await asyncio.wait((pump, reader))
        if not pump.cancelled() and (error := pump.exception()) is not None:
            log.error("websocket pump for %s failed", topic, exc_info=error)
        stats.open_websockets -= 1
        if transport is not None and transport.is_closing() and transport.get_write_buffer_size():
            # Closed with bytes left (e.g. the close frame) for a slow reader: they may still
            # arrive; a peer that reads nothing at all must not hold the socket for ever.
            asyncio.get_running_loop().call_later(close_timeout_s, _abort, transport)
    return ws


def _limit_backlog(transport: asyncio.BaseTransport | None, send_buffer_bytes: int | None) -> None:
    """Keep backlog in our mailbox, where it is conflated, not in buffers (module docstring)."""
    if transport is None:
        return
    # Pause (and make drain() wait) as soon as anything is left unwritten.
    with contextlib.suppress(AttributeError, ValueError):
        transport.set_write_buffer_limits(high=0)  # type: ignore[attr-defined]
    sock = transport.get_extra_info("socket")
    if send_buffer_bytes is not None and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)


def _abort(transport: asyncio.BaseTransport | None) -> None:
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.abort()  # type: ignore[attr-defined]


# -- Server-Sent Events ----------------------------------------------------------------------

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def sse_stream(
    request: web.Request,
    hub: Hub,
    topic: str,
    last_event_id: Cursor | None,
    *,
    heartbeat_s: float = 15.0,
    retry_ms: int = 2000,
    named_events: bool = False,
    send_buffer_bytes: int | None = SEND_BUFFER_BYTES,
    stats: StreamStats,
) -> web.StreamResponse:
    """Stream ``topic`` as ``text/event-stream`` until its terminal event, then end.

    ``last_event_id`` (from ``Last-Event-ID`` or ``?last_event_id=``) skips what the
    client has, if it is a cursor of this stream; ``named_events`` selects the issue's
    naming (module docstring).
    """
    since = hub.resume_seq(topic, last_event_id)
    latest = hub.latest_message(topic)
    if since is not None and latest is not None and since == latest.seq and hub.is_finished(topic):
        return web.Response(status=204, headers={"Cache-Control": "no-cache"})
    response = web.StreamResponse(headers=SSE_HEADERS)
    response.content_type = "text/event-stream"
    # Before prepare(), so the headers say Connection: close (module docstring).
    response.force_close()
    stats.open_sse += 1
    stats.sse_opened += 1
    try:
        async with hub.subscribe(topic, since) as subscription:
            writer = await response.prepare(request)
            assert writer is not None
            _limit_backlog(request.transport, send_buffer_bytes)
            await response.write(b"retry: %d\n\n" % retry_ms)
            while True:
                try:
                    message = await subscription.get(timeout_s=heartbeat_s)
                except TimeoutError:
                    await response.write(b": heartbeat\n\n")
                    stats.sse_heartbeats_sent += 1
                    continue
                if message is None:
                    break
                await writer.drain()  # returns at once unless the transport is paused
                message = subscription.refresh(message)  # newer while we waited?
                await response.write(message.sse_event(named=named_events))
                stats.sse_messages_sent += 1
            await response.write_eof()
    except ConnectionError:
        log.debug("SSE client of %s went away", topic)
    finally:
        stats.open_sse -= 1
    return response
