"""The progress hub: one topic per scan, latest state retained, fan-out with conflation.

The hub is pure asyncio (no aiohttp): the WebSocket and SSE adapters in ``server/streams.py``
consume it, so it is tested without sockets.

Why it looks the way it does:

- **Serialise once.** ``publish`` stamps ``published_at`` (epoch seconds) into the snapshot,
  serialises it once with orjson and keeps the bytes in a :class:`Message`. The SSE event
  and the WebSocket frame are built from those bytes at most once per message, when the
  first watcher needs them. Frames from server to client are not masked (RFC 6455 5.1), so
  one encoded frame is byte-identical for every watcher.
- **One-slot mailbox.** Each subscription holds at most one undelivered message. A newer
  message replaces an undelivered older one (counted as *conflated*): a slow watcher gets
  the newest state, never a backlog, and never holds the others up. Nothing is lost by
  this: every snapshot is the complete state (all stages with their status and progress),
  so a stage transition that was overwritten is visible in the snapshot that replaced it.
  The terminal message is the last one of a topic, so nothing can replace it: it always
  reaches every subscriber still subscribed, after which the subscription ends.
- **Cheap fan-out, bounded lag.** The cost of fan-out is per watcher per snapshot, so it
  is done by one *sweep* over the subscribers, scheduled on the loop by ``publish``, with
  no per-watcher task switch when avoidable. A subscriber may register a *sink*: a
  synchronous callable that takes the message if it can right now (e.g. the socket is
  writable) and returns ``True``. The sweep hands the message to the sink when the mailbox
  is empty and the consumer is not in the middle of a delivery; otherwise the message goes
  to the mailbox and one future is resolved to wake the consumer.
  The sweep always offers the topic's *newest* message: snapshots published while a sweep
  is pending or running are coalesced into it, so when the update rate exceeds what one
  core can send the loop does not queue sweep after sweep (lag would then grow without
  bound); every watcher is simply brought up to date once per pass. A pass yields to the
  loop every ``sweep_chunk`` subscribers, so I/O keeps flowing during a 10,000-watcher
  pass, and a snapshot published mid-pass is what the rest of the pass sends.
- **Ordering.** A message whose ``seq`` is not above the retained one is late or a
  duplicate and is ignored. ``since`` on subscribe skips everything the client has seen.
- **Epochs.** Each topic mints an epoch when it is created and stamps it into every
  snapshot (``epoch``) and SSE id (``EPOCH.SEQ``), because seq restarts at 1 in a new
  process; :meth:`Hub.resume_seq` turns a client's cursor into a ``since`` for this stream
  (``server/cursor.py`` has the rule).
- **Retention.** After its terminal message a topic stays retained, so a late watcher gets
  the final state at once and ends; finished topics are kept up to ``max_finished_topics``
  (least recently finished dropped first) or until :meth:`Hub.forget`.

``publish`` must be called on the event-loop thread; :meth:`Hub.threadsafe_publisher`
returns the bridge for a scan running in a worker thread. Delivery happens on the loop
shortly after ``publish`` returns (synchronously if no loop is running).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import orjson
from technic.engine.progress import TERMINAL_STATUSES
from technic.server.cursor import Cursor

log = logging.getLogger(__name__)

Snapshot = dict[str, Any]
EndReason = Literal["terminal", "closed", "shutdown", "unsubscribed"]
Sink = Callable[["Message"], bool]

_WS_FIN_TEXT = 0x81  # FIN bit + opcode 1 (text)
_PACK_LEN16 = struct.Struct("!BBH").pack
_PACK_LEN64 = struct.Struct("!BBQ").pack


def encode_ws_text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented WebSocket text frame (server to client, RFC 6455 5.2)."""
    length = len(payload)
    if length < 126:
        header = bytes((_WS_FIN_TEXT, length))
    elif length < 65536:
        header = _PACK_LEN16(_WS_FIN_TEXT, 126, length)
    else:
        header = _PACK_LEN64(_WS_FIN_TEXT, 127, length)
    return header + payload


@dataclass(slots=True, eq=False)
class Message:
    """One published snapshot, serialised once, with its wire encodings built lazily.

    ``event`` is ``"progress"`` or, for the last message of a scan, its terminal status.
    ``snapshot`` is the published dict (with ``published_at`` and ``epoch``); treat it as
    read-only.
    """

    topic: str
    epoch: str
    seq: int
    event: str
    data: bytes
    terminal: bool
    published_at: float
    snapshot: Snapshot = field(repr=False)
    index: int = 0  # ordinal among the topic's published messages, for conflation counts
    _ws_frame: bytes | None = field(default=None, repr=False)
    _sse_named: bytes | None = field(default=None, repr=False)
    _sse_compat: bytes | None = field(default=None, repr=False)

    def ws_frame(self) -> bytes:
        """The complete WebSocket text frame carrying ``data``; the same object every call."""
        frame = self._ws_frame
        if frame is None:
            frame = self._ws_frame = encode_ws_text_frame(self.data)
        return frame

    def sse_event(self, *, named: bool = False) -> bytes:
        """The SSE event bytes; the same object every call for the same ``named``.

        ``named=True``: ``id`` (the cursor ``EPOCH.SEQ``), ``event: progress`` or the
        terminal status, ``data``.
        ``named=False`` (what ``EventSource.onmessage`` sees): progress snapshots carry no
        ``event:`` field; the terminal snapshot is sent unnamed and then once more named
        after its status, so ``onmessage`` sees the final state and a listener for
        ``completed`` / ``failed`` / ... fires too. ``streams.py`` explains the choice.
        """
        if named:
            event = self._sse_named
            if event is None:
                event = self._sse_named = b"id: %s.%d\nevent: %s\ndata: %s\n\n" % (
                    self.epoch.encode("ascii"),
                    self.seq,
                    self.event.encode("ascii"),
                    self.data,
                )
            return event
        event = self._sse_compat
        if event is None:
            event = b"id: %s.%d\ndata: %s\n\n" % (self.epoch.encode("ascii"), self.seq, self.data)
            if self.terminal:
                event += self.sse_event(named=True)
            self._sse_compat = event
        return event


@dataclass(frozen=True, slots=True)
class HubStats:
    """Counters for ``/metrics``; message counts are totals since the hub was created."""

    topics: int
    active_topics: int
    finished_topics: int
    subscribers: int
    published: int
    ignored: int
    delivered: int
    conflated: int
    sweeps: int
    sweep_seconds: float


@dataclass(slots=True, eq=False)
class _Topic:
    name: str
    epoch: str = field(default_factory=Cursor.new_epoch)
    latest: Message | None = None
    finished: bool = False
    mirror: bool = False  # fed by publish_encoded: another instance's scan
    published: int = 0
    subscribers: dict[Subscription, None] = field(default_factory=dict)
    # The sweep in progress: subscribers of this pass, next index, newest index at start.
    sweeping: bool = False
    sweep_list: tuple[Subscription, ...] = ()
    sweep_next: int = 0
    sweep_index: int = 0
    swept: asyncio.Event | None = None  # set when the sweep in progress ends
    wake_after_sweep: list[Subscription] = field(default_factory=list)


class Subscription:
    """One watcher of one topic: an async iterator of :class:`Message`, one-slot mailbox.

    Iteration ends after the terminal message, when the topic is closed or forgotten
    (after the message still in the mailbox), on :meth:`Hub.shutdown`, or on
    :meth:`close`; :attr:`end_reason` says which. ``async with`` closes it on exit.
    """

    __slots__ = (
        "_busy",
        "_hub",
        "_last_seq",
        "_offered",
        "_pending",
        "_sink",
        "_topic",
        "_waiter",
        "conflated",
        "end_reason",
    )

    def __init__(self, hub: Hub, topic: _Topic, since: int | None, sink: Sink | None) -> None:
        self._hub = hub
        self._topic = topic
        self._last_seq = since
        # Index of the newest message this subscription has been offered (or had at start).
        self._offered = topic.published
        self._sink = sink
        self._pending: Message | None = None
        self._waiter: asyncio.Future[bool] | None = None
        # True from the moment a message is handed to the consumer until it asks for the
        # next one: while it is still writing, the sink must not overtake it.
        self._busy = False
        self.conflated = 0
        self.end_reason: EndReason | None = None

    @property
    def topic(self) -> str:
        return self._topic.name

    @property
    def last_seq(self) -> int | None:
        """The seq of the last message delivered (or ``since``), None before any."""
        return self._last_seq

    @property
    def ended(self) -> bool:
        return self.end_reason is not None

    async def get(self, timeout_s: float | None = None) -> Message | None:
        """The next message, or None once the subscription has ended.

        Raises ``TimeoutError`` if nothing arrives within ``timeout_s`` (the subscription
        stays open, so a caller can send a heartbeat and ask again).
        """
        self._busy = False
        timer: asyncio.TimerHandle | None = None
        try:
            while True:
                message = self._pending
                if message is not None:
                    self._pending = None
                    self._last_seq = message.seq
                    self._busy = True
                    self._hub._delivered += 1
                    if message.terminal:
                        self._end("terminal")
                    return message
                if self.end_reason is not None:
                    return None
                loop = asyncio.get_running_loop()
                waiter: asyncio.Future[bool] = loop.create_future()
                self._waiter = waiter
                if timeout_s is not None and timer is None:
                    timer = loop.call_later(timeout_s, _resolve, waiter, False)
                try:
                    woken = await waiter
                finally:
                    self._waiter = None
                if not woken and self._pending is None and self.end_reason is None:
                    raise TimeoutError(f"no message within {timeout_s} s")
        finally:
            if timer is not None:
                timer.cancel()

    async def settled(self) -> None:
        """Return once the topic's sweep in progress (if any) has reached every subscriber.

        A consumer whose iteration ended on the terminal message can wait here before
        closing its socket, so thousands of closing handshakes do not slow down the sweep
        that is still delivering the terminal message to the others.
        """
        state = self._topic
        if not state.sweeping:
            return
        if state.swept is None:
            state.swept = asyncio.Event()
        await state.swept.wait()

    def refresh(self, message: Message) -> Message:
        """The newest message: ``message`` (the one being handled), or a newer one.

        For a consumer that had to wait (e.g. for a socket to drain) before sending the
        message it got: if a newer one arrived meanwhile, it takes its place and the held
        one counts as conflated.
        """
        pending = self._pending
        if pending is None:
            return message
        self._pending = None
        self._last_seq = pending.seq
        self.conflated += 1
        self._hub._conflated += 1
        if pending.terminal:
            self._end("terminal")
        return pending

    def close(self) -> None:
        """Unsubscribe; idempotent. A message still in the mailbox is dropped."""
        self._pending = None
        self._end("unsubscribed")

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        message = await self.get()
        if message is None:
            raise StopAsyncIteration
        return message

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- called by the hub -----------------------------------------------------------------

    def _offer(self, message: Message) -> bool:
        """Take the topic's newest message; True if the sink delivered it right away."""
        if self.end_reason is not None or message.index <= self._offered:
            return False  # ended, or it has this one already (pending or delivered)
        skipped = message.index - self._offered - 1  # published meanwhile, never offered
        self._offered = message.index
        last = self._last_seq
        if last is not None and message.seq <= last:
            if message.terminal:
                self._end("terminal")  # the client has the final state already
            return False
        pending = self._pending
        if pending is not None:
            skipped += 1
        if skipped:
            self.conflated += skipped
            self._hub._conflated += skipped
        sink = self._sink
        if sink is not None and pending is None and not self._busy:
            try:
                taken = sink(message)
            except Exception:  # a broken sink must not stop the sweep for everyone else
                log.exception("sink of a %s subscriber failed", self._topic.name)
                taken = False
            if taken:
                self._last_seq = message.seq
                if message.terminal:
                    # The consumer only has to wind down (close its socket): wake it when
                    # the sweep is over, so that work does not slow the rest of the sweep.
                    self._end("terminal", wake=False)
                    self._topic.wake_after_sweep.append(self)
                return True
        self._pending = message
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)
        return False

    def _end(self, reason: EndReason, *, drop_pending: bool = False, wake: bool = True) -> None:
        if drop_pending:
            self._pending = None
        if self.end_reason is None:
            self.end_reason = reason
            self._hub._detach(self._topic, self)
        if wake:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)


def _resolve(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


class Hub:
    """Topics of progress snapshots with retained state and conflating fan-out.

    ``sweep_chunk`` subscribers are served per loop callback during a sweep. ``clock``
    gives ``published_at`` (epoch seconds); it is injectable for tests. ``on_publish``
    gets every message :meth:`publish` accepts (on the loop, synchronously, so it must
    not block): the fleet's bus shares a local scan's snapshots through it.
    """

    def __init__(
        self,
        *,
        max_finished_topics: int = 1000,
        sweep_chunk: int = 500,
        clock: Callable[[], float] = time.time,
        on_publish: Callable[[Message], None] | None = None,
    ) -> None:
        if max_finished_topics < 0:
            raise ValueError("max_finished_topics: must be >= 0")
        if sweep_chunk < 1:
            raise ValueError("sweep_chunk: must be >= 1")
        self._max_finished = max_finished_topics
        self._sweep_chunk = sweep_chunk
        self._clock = clock
        self._on_publish = on_publish
        self._topics: dict[str, _Topic] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._closed = False
        self._published = 0
        self._ignored = 0
        self._delivered = 0
        self._conflated = 0
        self._sweeps = 0
        self._sweep_seconds = 0.0

    # -- publishing ------------------------------------------------------------------------

    def publish(self, topic: str, snapshot: Snapshot, *, mirror: bool = False) -> Message | None:
        """Retain and fan out one snapshot; None if it was ignored (stale seq, finished).

        ``snapshot`` must carry an int ``seq`` that rises per topic. ``published_at`` is
        written into it. Call on the event-loop thread. ``mirror=True`` is for a state this
        process does not own (rebuilt from the database): it is not handed to
        ``on_publish``, and the owner's stream replaces it when heard
        (:meth:`publish_encoded`). A hub shut down fans nothing out, but still hands a
        running topic's snapshot to ``on_publish``: the cancelled state of a scan stopped
        by the shutdown must reach the other instances' watchers.
        """
        seq = snapshot.get("seq")
        if type(seq) is not int:
            raise ValueError(f"snapshot for {topic!r}: 'seq' must be an int, got {seq!r}")
        state = self._topics.get(topic)
        if self._closed:
            self._ignored += 1
            running = state is not None and not state.finished
            if not mirror and self._on_publish is not None and running:
                assert state is not None
                if state.latest is None or seq > state.latest.seq:
                    self._on_publish(self._encode(state, snapshot, seq))
            return None
        if state is None:
            state = self._topics[topic] = _Topic(topic)
        elif state.finished or (state.latest is not None and seq <= state.latest.seq):
            self._ignored += 1
            log.debug("ignored snapshot seq %d for %s (finished or not newer)", seq, topic)
            return None
        state.mirror = mirror
        message = self._encode(state, snapshot, seq)
        self._accept(state, message)
        if not mirror and self._on_publish is not None:
            self._on_publish(message)
        return message

    def publish_encoded(
        self,
        topic: str,
        data: bytes,
        *,
        seq: int,
        epoch: str,
        status: str,
        published_at: float,
    ) -> Message | None:
        """Retain and fan out a snapshot another instance serialised (its ``data`` as is).

        The topic takes the owner's ``epoch``, so cursors are the same on every instance.
        A message not newer than the retained one is ignored, whatever its epoch: a state
        this hub made up (from the database, while the owner's stream was unreachable) is
        replaced by the owner's stream as soon as it is heard again. Never handed to
        ``on_publish``. The JSON is parsed only when kept (for :meth:`latest`).
        """
        if self._closed:
            self._ignored += 1
            return None
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _Topic(topic, epoch=epoch)
        elif state.finished or (state.latest is not None and seq <= state.latest.seq):
            self._ignored += 1
            return None
        state.epoch = epoch
        state.mirror = True
        terminal = status in TERMINAL_STATUSES
        message = Message(
            topic=topic,
            epoch=epoch,
            seq=seq,
            event=status if terminal else "progress",
            data=data,
            terminal=terminal,
            published_at=published_at,
            snapshot=orjson.loads(data),
            index=state.published + 1,
        )
        self._accept(state, message)
        return message

    def _encode(self, state: _Topic, snapshot: Snapshot, seq: int) -> Message:
        """Stamp and serialise a snapshot once (module docstring)."""
        status = snapshot.get("status")
        terminal = status in TERMINAL_STATUSES
        published_at = self._clock()
        snapshot["published_at"] = published_at
        snapshot["epoch"] = state.epoch
        return Message(
            topic=state.name,
            epoch=state.epoch,
            seq=seq,
            event=str(status) if terminal else "progress",
            data=orjson.dumps(snapshot),
            terminal=terminal,
            published_at=published_at,
            snapshot=snapshot,
            index=state.published + 1,
        )

    def _accept(self, state: _Topic, message: Message) -> None:
        """Make ``message`` the topic's retained state and schedule its fan-out."""
        state.published = message.index
        state.latest = message
        state.finished = message.terminal
        self._published += 1
        if message.terminal:
            self._retain(state.name)  # the sweep holds the state: eviction cannot lose it
        if state.subscribers and not state.sweeping:
            state.sweeping = True
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                while state.sweeping:
                    self._sweep(state, None)
            else:
                loop.call_soon(self._sweep, state, loop)

    def _sweep(self, state: _Topic, loop: asyncio.AbstractEventLoop | None) -> None:
        """Offer the newest message to the next chunk of this pass's subscribers."""
        started = time.perf_counter()
        latest = state.latest
        assert latest is not None
        subscribers = state.sweep_list
        if state.sweep_next >= len(subscribers):  # a new pass
            # A copy: a subscription that ends during the pass detaches itself.
            subscribers = state.sweep_list = tuple(state.subscribers)
            state.sweep_next = 0
            state.sweep_index = latest.index
        start = state.sweep_next
        end = min(start + self._sweep_chunk, len(subscribers))
        delivered = 0
        for subscription in subscribers[start:end]:
            if subscription._offer(latest):
                delivered += 1
        self._delivered += delivered
        state.sweep_next = end
        if end >= len(subscribers):
            self._sweeps += 1
            state.sweep_list = ()
            if state.latest is None or state.latest.index <= state.sweep_index:
                state.sweeping = False  # everyone has the newest
                if state.swept is not None:
                    state.swept.set()
                    state.swept = None
                if state.wake_after_sweep:
                    for subscription in state.wake_after_sweep:
                        subscription._wake()
                    state.wake_after_sweep.clear()
        self._sweep_seconds += time.perf_counter() - started
        if state.sweeping and loop is not None:
            loop.call_soon(self._sweep, state, loop)

    def threadsafe_publisher(
        self, topic: str, loop: asyncio.AbstractEventLoop
    ) -> Callable[[Snapshot], None]:
        """An ``on_emit`` callback for a tracker running off the loop thread."""

        def publish(snapshot: Snapshot) -> None:
            loop.call_soon_threadsafe(self.publish, topic, snapshot)

        return publish

    # -- subscribing -----------------------------------------------------------------------

    def subscribe(
        self, topic: str, since: int | None = None, *, sink: Sink | None = None
    ) -> Subscription:
        """Watch ``topic``; the retained snapshot comes first unless its seq <= ``since``.

        ``sink``, if given, is tried synchronously for each newly published message while
        the mailbox is empty and the consumer is idle; it returns True if it delivered the
        message (see the module docstring). A topic not yet published to is created empty.
        """
        state = self._topics.get(topic)
        if state is None:
            state = _Topic(topic)
            if not self._closed:
                self._topics[topic] = state
        subscription = Subscription(self, state, since, sink)
        if self._closed:
            subscription.end_reason = "shutdown"
            return subscription
        latest = state.latest
        if latest is not None and (since is None or latest.seq > since):
            subscription._pending = latest
        if state.finished:
            reason: EndReason = "terminal" if latest is not None and latest.terminal else "closed"
            subscription.end_reason = reason
        else:
            state.subscribers[subscription] = None
        return subscription

    def resume_seq(self, topic: str, cursor: Cursor | None) -> int | None:
        """The ``since`` for a watcher resuming at ``cursor``: its seq if the cursor belongs
        to this topic's stream (its epoch, or a bare seq naming a snapshot the stream has
        sent), else None, so the watcher gets the current snapshot (``server/cursor.py``).

        Call it right before :meth:`subscribe`, with no ``await`` in between.
        """
        state = self._topics.get(topic)
        if cursor is None or state is None or state.latest is None:
            return None
        if state.mirror and cursor.epoch == state.epoch:
            # The owner's stream, which this hub mirrors and may trail by a snapshot: a
            # cursor ahead of it waits for newer, never goes back.
            return cursor.seq
        if cursor.epoch not in (None, state.epoch) or cursor.seq > state.latest.seq:
            return None
        return cursor.seq

    # -- reading ---------------------------------------------------------------------------

    def has_topic(self, topic: str) -> bool:
        return topic in self._topics

    def running_topics(self, *, mirror: bool) -> list[str]:
        """Topics with a retained snapshot and no terminal one yet: those of the scans this
        process runs (``mirror=False``) or those fed by :meth:`publish_encoded`."""
        return [
            name
            for name, state in self._topics.items()
            if state.latest is not None and not state.finished and state.mirror == mirror
        ]

    def is_finished(self, topic: str) -> bool:
        """True once a topic had its terminal message or was closed (and is retained)."""
        state = self._topics.get(topic)
        return state is not None and state.finished

    def latest(self, topic: str) -> Snapshot | None:
        """The retained snapshot (read-only), or None."""
        state = self._topics.get(topic)
        return state.latest.snapshot if state is not None and state.latest else None

    def latest_message(self, topic: str) -> Message | None:
        """The retained message, whose ``data`` is the snapshot's JSON, or None."""
        state = self._topics.get(topic)
        return state.latest if state is not None else None

    def stats(self) -> HubStats:
        return HubStats(
            topics=len(self._topics),
            active_topics=sum(1 for state in self._topics.values() if not state.finished),
            finished_topics=len(self._finished),
            subscribers=sum(len(state.subscribers) for state in self._topics.values()),
            published=self._published,
            ignored=self._ignored,
            delivered=self._delivered,
            conflated=self._conflated,
            sweeps=self._sweeps,
            sweep_seconds=self._sweep_seconds,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    # -- lifecycle -------------------------------------------------------------------------

    def close_topic(self, topic: str) -> None:
        """No more messages for ``topic`` (e.g. a scan dropped without a terminal state).

        Subscribers get what is in their mailbox and end; the latest snapshot stays
        retained like a finished topic's. Further publishes to it are ignored.
        """
        state = self._topics.get(topic)
        if state is None:
            return
        state.finished = True
        self._retain(topic)
        self._end_subscribers(state)

    def forget(self, topic: str) -> None:
        """Drop a topic and its retained state; its subscribers end as for close_topic."""
        state = self._topics.pop(topic, None)
        self._finished.pop(topic, None)
        if state is not None:
            self._end_subscribers(state)

    def shutdown(self) -> None:
        """End every subscription now (mailboxes dropped); later publishes are ignored."""
        self._closed = True
        for state in tuple(self._topics.values()):
            for subscription in tuple(state.subscribers):
                subscription._end("shutdown", drop_pending=True)

    # -- internals -------------------------------------------------------------------------

    def _retain(self, topic: str) -> None:
        finished = self._finished
        finished[topic] = None
        finished.move_to_end(topic)
        while len(finished) > self._max_finished:
            oldest, _ = finished.popitem(last=False)
            state = self._topics.pop(oldest, None)
            if state is not None:
                self._end_subscribers(state)

    def _end_subscribers(self, state: _Topic) -> None:
        """End a closed or dropped topic's subscribers after what is in their mailbox.

        After a terminal message there is nothing to do: it was offered to every
        subscriber, and each ends once it has taken it.
        """
        if state.latest is not None and state.latest.terminal:
            return
        for subscription in tuple(state.subscribers):
            subscription._end("closed")

    def _detach(self, state: _Topic, subscription: Subscription) -> None:
        state.subscribers.pop(subscription, None)
        self._drop_if_unused(state)

    def _drop_if_unused(self, state: _Topic) -> None:
        """Forget a topic that only a subscriber created (never published, nobody left)."""
        if (
            state.latest is None
            and not state.subscribers
            and not state.finished
            and self._topics.get(state.name) is state
        ):
            del self._topics[state.name]
