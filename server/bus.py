"""The fleet's data plane: progress snapshots shared between instances through Redis.

With ``REDIS_URL`` set, every ``technic serve`` instance serves every scan. The instance
that runs a scan (its *owner*) hands each snapshot its hub accepts to :meth:`RedisBus.publish`;
the bus writes it to Redis, and every instance's bus feeds what it hears into its own
:class:`~technic.server.hub.Hub`, which fans out to its watchers as for a local scan.

What is kept in Redis, and why so little. Every snapshot is the complete state of its scan,
and a hub delivers only the newest one to a watcher (one-slot mailbox), so resuming never
needs the snapshots between two states: it needs the newest one newer than the watcher's
cursor. Per scan Redis therefore holds one value, the newest message (key
``technic:scan:{id}:latest``, expiring :data:`FINISHED_TTL_S` after the terminal state, or
:data:`RUNNING_TTL_S` after the last snapshot of a scan whose owner vanished), and every
message also goes out on one pub/sub channel, :data:`CHANNEL`, to which each instance holds
one subscription. A Redis stream per scan (``XADD``) would store history no consumer reads.

A message is a header line ``scan_id epoch seq status published_at`` and the snapshot's JSON
bytes exactly as the owner serialised them: a receiving hub reuses those bytes for every
frame (``Hub.publish_encoded``), and takes the owner's epoch, so a cursor ``EPOCH.SEQ`` means
the same on every instance. Seq and epoch come from the owner, not from Redis: a Redis that
lost its data cannot make an old cursor name a new snapshot.

Outages. Publishing never blocks or fails a scan: :meth:`RedisBus.publish` puts the message
in an outbox holding the newest message per scan, which one task writes out (``SET`` and
``PUBLISH``, pipelined). While Redis is unreachable the outbox keeps only the newest message
of each scan (the older ones are dropped and counted) and is written out when Redis answers
again; the subscription reconnects with backoff, and then catches up every mirrored scan
(``GET`` of its latest; the hub ignores anything not newer) and writes the current state of
each local scan again (a restarted Redis has lost it). Watchers are never disconnected by an
outage: they receive nothing new until Redis is back, then the current state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from technic.server.hub import Hub, Message

log = logging.getLogger(__name__)

CHANNEL = "technic:progress"
FINISHED_TTL_S = 3600
RUNNING_TTL_S = 24 * 3600
CONNECT_TIMEOUT_S = 2.0
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 2.0
# How long shutdown waits for the outbox (a stopped scan's last state) to reach Redis.
FLUSH_TIMEOUT_S = 3.0


def latest_key(scan_id: str) -> str:
    return f"technic:scan:{scan_id}:latest"


class RedisUnavailable(ConnectionError):
    """Redis cannot be reached (or ``REDIS_URL`` cannot be used) when the service starts."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message as it travels through Redis: the owner's header and snapshot bytes."""

    scan_id: str
    epoch: str
    seq: int
    status: str
    published_at: float
    data: bytes

    @classmethod
    def of(cls, message: Message) -> Envelope:
        status = message.event if message.terminal else str(message.snapshot.get("status"))
        return cls(
            message.topic, message.epoch, message.seq, status, message.published_at, message.data
        )

    def encode(self) -> bytes:
        header = (
            f"{self.scan_id} {self.epoch} {self.seq} {self.status} {self.published_at!r}\n"
        ).encode("ascii")
        return header + self.data

    @classmethod
    def decode(cls, raw: bytes) -> Envelope:
        """``ValueError`` for bytes that are not a message (another program's, a bug)."""
        header, newline, data = raw.partition(b"\n")
        fields = header.decode("ascii").split(" ")
        if not newline or len(fields) != 5:
            raise ValueError(f"not a progress message: {raw[:80]!r}")
        scan_id, epoch, seq, status, published_at = fields
        return cls(scan_id, epoch, int(seq), status, float(published_at), data)


@dataclass(frozen=True, slots=True)
class BusStats:
    """Counters since start, for ``/metrics`` and the benchmark."""

    available: bool
    written: int
    dropped: int
    received: int
    reconnects: int


class RedisBus:
    """One instance's link to the fleet's Redis: an outbox writer and one subscription.

    Create it, give its :meth:`publish` to the hub as ``on_publish``, then :meth:`start`
    it with that hub; :meth:`stop` writes what is left in the outbox (bounded) and closes.
    """

    def __init__(self, url: str) -> None:
        try:
            # No retries inside redis-py: a failure must surface here, where the outbox
            # keeps the message and the subscription reconnects and catches up.
            self._redis = aioredis.Redis.from_url(
                url,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                socket_timeout=CONNECT_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=10,
            )
        except ValueError as error:
            raise RedisUnavailable(f"REDIS_URL cannot be used: {error}") from error
        self._hub: Hub | None = None
        self._outbox: dict[str, Message] = {}
        self._outbox_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = False
        self._write_failed = False
        self._wanted: set[str] = set()
        self._written = 0
        self._dropped = 0
        self._received = 0
        self._reconnects = 0

    @property
    def available(self) -> bool:
        """Subscribed, and the last write (if any) went through."""
        return self._subscribed and not self._write_failed

    def stats(self) -> BusStats:
        return BusStats(
            self.available, self._written, self._dropped, self._received, self._reconnects
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, hub: Hub) -> None:
        """Check that Redis answers (``RedisUnavailable`` if not), then run the tasks."""
        try:
            await self._redis.ping()
        except (RedisError, OSError) as error:
            await self._redis.aclose()
            raise RedisUnavailable(f"Redis at REDIS_URL is unreachable: {error}") from error
        self._hub = hub
        subscribed = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._subscribe_forever(subscribed), name="redis-subscription"),
            asyncio.create_task(self._write_forever(), name="redis-outbox"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await subscribed.wait()

    async def stop(self) -> None:
        if self._outbox and self.available:
            try:
                async with asyncio.timeout(FLUSH_TIMEOUT_S):
                    await self._write_outbox()
            except (TimeoutError, RedisError, OSError) as error:
                left = len(self._outbox)
                log.warning("%d progress messages not written to Redis: %s", left, error)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()

    # -- the owner's side ------------------------------------------------------------------

    def publish(self, message: Message) -> None:
        """Queue a local scan's message for Redis; never blocks (module docstring)."""
        if self._outbox.pop(message.topic, None) is not None:
            self._dropped += 1  # the newer state replaces it
        self._outbox[message.topic] = message
        self._outbox_ready.set()

    async def _write_forever(self) -> None:
        backoff_s = BACKOFF_MIN_S
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            try:
                await self._write_outbox()
            except (RedisError, OSError) as error:
                if not self._write_failed:
                    log.warning("Redis unavailable for progress (%s): kept for later", error)
                self._write_failed = True
                self._outbox_ready.set()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
            else:
                self._write_failed = False
                backoff_s = BACKOFF_MIN_S

    async def _write_outbox(self) -> None:
        """Write every queued message; on failure what was not written stays queued."""
        batch, self._outbox = self._outbox, {}
        if not batch:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for message in batch.values():
                    raw = Envelope.of(message).encode()
                    ttl_s = FINISHED_TTL_S if message.terminal else RUNNING_TTL_S
                    pipe.set(latest_key(message.topic), raw, ex=ttl_s)
                    pipe.publish(CHANNEL, raw)
                await pipe.execute()
        except BaseException:
            for topic, message in batch.items():
                self._outbox.setdefault(topic, message)  # unless a newer one came meanwhile
            raise
        self._written += len(batch)

    # -- everyone's side -------------------------------------------------------------------

    async def latest(self, scan_id: str) -> Envelope | None:
        """The newest message of a scan, from Redis; None if unknown or Redis is down."""
        try:
            raw = await self._redis.get(latest_key(scan_id))
        except (RedisError, OSError) as error:
            log.debug("no latest for %s from Redis: %s", scan_id, error)
            return None
        return _decode(raw) if raw is not None else None

    async def mirror(self, scan_id: str) -> bool:
        """Make the hub mirror a scan it does not have; True if Redis knows the scan.

        Messages heard while the ``GET`` is under way are fed in too (the hub keeps the
        newest), so a terminal message published meanwhile is not missed.
        """
        self._wanted.add(scan_id)
        try:
            envelope = await self.latest(scan_id)
        finally:
            self._wanted.discard(scan_id)
        if envelope is not None:
            self._feed(envelope)
        return envelope is not None or self._hub_has(scan_id)

    def _hub_has(self, scan_id: str) -> bool:
        return self._hub is not None and self._hub.latest(scan_id) is not None

    def _feed(self, envelope: Envelope) -> None:
        hub = self._hub
        assert hub is not None
        hub.publish_encoded(
            envelope.scan_id,
            envelope.data,
            seq=envelope.seq,
            epoch=envelope.epoch,
            status=envelope.status,
            published_at=envelope.published_at,
        )

    async def _subscribe_forever(self, subscribed: asyncio.Event) -> None:
        backoff_s = BACKOFF_MIN_S
        first = True
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self._subscribed = True
                subscribed.set()
                if not first:
                    self._reconnects += 1
                    log.warning("Redis reachable again: catching up")
                    await self._catch_up()
                first = False
                backoff_s = BACKOFF_MIN_S
                while True:
                    item = await pubsub.get_message(timeout=None)
                    if item is not None and item["type"] == "message":
                        self._on_message(item["data"])
            except (RedisError, OSError) as error:
                if self._subscribed:
                    log.warning("Redis subscription lost (%s): reconnecting", error)
                self._subscribed = False
                first = False
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)

    def _on_message(self, raw: bytes) -> None:
        try:
            envelope = Envelope.decode(raw)
        except (ValueError, UnicodeDecodeError) as error:
            log.warning("ignored a message on %s: %s", CHANNEL, error)
            return
        self._received += 1
        # Only the scans this hub mirrors (watched, or asked about) or is about to mirror;
        # its own scans' messages come back too and are ignored by the hub's seq check.
        if self._hub_has(envelope.scan_id) or envelope.scan_id in self._wanted:
            self._feed(envelope)

    async def _catch_up(self) -> None:
        """After an outage: the current state of every mirrored scan, and Redis repaired
        with the current state of every local one (a restarted Redis lost it)."""
        hub = self._hub
        assert hub is not None
        for topic in hub.running_topics(mirror=False):
            message = hub.latest_message(topic)
            if message is not None and topic not in self._outbox:
                self.publish(message)
        mirrored = hub.running_topics(mirror=True)
        if not mirrored:
            return
        values = await self._redis.mget([latest_key(topic) for topic in mirrored])
        for raw in values:
            if raw is not None and (envelope := _decode(raw)) is not None:
                self._feed(envelope)


def _decode(raw: bytes) -> Envelope | None:
    try:
        return Envelope.decode(raw)
    except (ValueError, UnicodeDecodeError) as error:
        log.warning("ignored a stored progress message: %s", error)
        return None
