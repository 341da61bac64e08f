"""Ordered, retried database writes: a scan's record survives the database going away.

Every write about scans goes through one queue drained by one task, so writes happen in
the order they were made (a stage cannot finish before its scan exists). When the
database is unreachable the write is kept and retried with backoff until it succeeds;
meanwhile ``healthy`` is False and ``/health`` says degraded. Nothing is dropped: the scan
goes on in memory, and its final state and results land once the database is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from technic.storage import DatabaseUnavailable, IllegalTransition, StorageError

log = logging.getLogger(__name__)

Write = Callable[[], Awaitable[object]]


@dataclass
class _Pending:
    description: str
    write: Write


class Persister:
    """A single-consumer queue of database writes with retry on ``DatabaseUnavailable``."""

    def __init__(self, *, first_retry_s: float = 0.2, max_retry_s: float = 5.0) -> None:
        self.first_retry_s = first_retry_s
        self.max_retry_s = max_retry_s
        self.healthy = True
        self.failed_writes = 0
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="technic-persister")

    def submit(self, description: str, write: Write) -> None:
        self._queue.append(_Pending(description, write))
        self._idle.clear()
        self._wakeup.set()

    @property
    def backlog(self) -> int:
        return len(self._queue)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every submitted write is done; False if time ran out."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            pending = self._queue[0]
            await self._write(pending)
            self._queue.popleft()

    async def _write(self, pending: _Pending) -> None:
        delay_s = self.first_retry_s
        retried = False
        while True:
            try:
                await pending.write()
            except DatabaseUnavailable as error:
                if self.healthy:
                    log.warning("database unavailable, keeping writes: %s", error)
                self.healthy = False
                retried = True
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self.max_retry_s)
                continue
            except IllegalTransition as error:
                if not retried:
                    self.failed_writes += 1
                    log.error("%s refused: %s", pending.description, error)
            except StorageError as error:
                self.failed_writes += 1
                log.error("%s failed: %s", pending.description, error)
            except Exception:
                self.failed_writes += 1
                log.exception("%s failed", pending.description)
            if not self.healthy:
                log.info("database reachable again")
            self.healthy = True
            return
