"""LISTEN on a dedicated connection that comes back after the database does.

The fleet's instances wake each other with NOTIFY (a scan queued or released, a cancel
requested: ``repository.QUEUE_CHANNEL`` and ``CANCEL_CHANNEL``). A pooled connection cannot
listen (the pool resets it), so the ``Listener`` holds one of its own. When it is lost (a
database restart, a network cut noticed by a ping every ``ping_s``) it reconnects every
``retry_s`` until it can, and then calls ``on_connected``: notifications sent meanwhile are
gone, so the owner of the listener looks at the database once. Nothing here is needed for
correctness: the fleet also polls slowly; LISTEN makes it prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

import asyncpg
from technic.storage._pg import describe, redact_url

log = logging.getLogger(__name__)

OnNotify = Callable[[str, str], None]


class Listener:
    """Calls ``on_notify(channel, payload)`` for every NOTIFY on ``channels``."""

    def __init__(
        self,
        url: str,
        channels: Sequence[str],
        on_notify: OnNotify,
        *,
        on_connected: Callable[[], None] = lambda: None,
        retry_s: float = 1.0,
        ping_s: float = 5.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.channels = tuple(channels)
        self.on_notify = on_notify
        self.on_connected = on_connected
        self.retry_s = retry_s
        self.ping_s = ping_s
        self.connect_timeout_s = connect_timeout_s
        self.connected = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="technic-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self._listen()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                if not failing:
                    log.warning("LISTEN on %s lost: %s", redact_url(self.url), describe(error))
                failing = True
            else:
                failing = False
            self.connected = False
            await asyncio.sleep(self.retry_s)

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.url, timeout=self.connect_timeout_s)
        try:
            lost = asyncio.get_running_loop().create_future()

            def on_lost(_: object) -> None:
                if not lost.done():
                    lost.set_result(None)

            conn.add_termination_listener(on_lost)
            for channel in self.channels:
                await conn.add_listener(channel, self._deliver)
            self.connected = True
            log.info("listening for %s", ", ".join(self.channels))
            self.on_connected()
            while not lost.done():
                await asyncio.wait([lost], timeout=self.ping_s)
                if not lost.done():
                    await conn.fetchval("SELECT 1", timeout=self.ping_s)
        finally:
            conn.terminate()

    def _deliver(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        self.on_notify(channel, str(payload))
