"""Which server owns which scan, and how the scans of a dead one are found.

Several ``technic serve`` may share one database (two on one machine, or a fleet). A scan
left pending or running by a server that died must become ``interrupted``; a scan another
live server is running must not. So each server is an owner, named
``host:pid:space:token`` (``space`` names this boot of the kernel and this pid namespace;
the random token makes a reused pid a new owner), stored with every scan it creates. It
records itself in the database at start and every ``OWNER_HEARTBEAT_S`` after; each time
it also marks interrupted the unfinished scans of

- every owner in its own pid space whose process is gone: proven dead at once, so a
  server restarted after a crash on the same machine interrupts at start-up, and one
  running beside it within ``OWNER_HEARTBEAT_S``;
- every owner silent for ``OWNER_TIMEOUT_S``, wherever it ran (and of none: scans older
  than owners): any live server notices a dead one on another machine within
  ``OWNER_TIMEOUT_S + OWNER_HEARTBEAT_S``, and forgets it.

The error of an interrupted scan names the dead owner. In a fleet (``REDIS_URL`` set) a
dead owner's *pending* scans (claimed from the fleet queue but not started) are not
interrupted but released: back in the queue, claimed by an instance with a free slot.

Times are the database's clock, so servers on several machines agree. A pid is trusted
only within its own space: two containers with the same host name have different pid
namespaces, and a live process that reuses a dead owner's pid leaves it to the heartbeat.

The heartbeat writes directly, not through the ``Persister`` queue: a backlog of result
writes must not make a live server look dead. While the database is unreachable nothing is
recorded; a server that stays cut off longer than the timeout while another reaches the
database has its running scans interrupted (they then cannot be stored as completed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

from technic.storage import Repository, StorageError

log = logging.getLogger(__name__)


@functools.cache
def pid_space() -> str | None:
    """This boot of this kernel and this pid namespace, where a pid names one process;
    None where ``/proc`` does not say (then only heartbeats tell a dead owner)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return hashlib.sha256(f"{boot}/{namespace}".encode()).hexdigest()[:12]


def new_owner() -> str:
    """This process's owner name: host, pid, pid space and a token unique to this start."""
    space = pid_space() or "unknown"
    return f"{socket.gethostname()}:{os.getpid()}:{space}:{uuid.uuid4().hex[:12]}"


def died_here(owner: str) -> bool:
    """Whether ``owner`` ran in this pid space and its process is gone."""
    parts = owner.split(":")
    space = pid_space()
    if len(parts) != 4 or space is None or parts[2] != space or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Ownership:
    """Keeps this server recorded as alive and interrupts the scans of dead ones."""

    def __init__(
        self,
        repository: Repository,
        *,
        heartbeat_s: float,
        timeout_s: float,
        on_interrupted: Callable[[int], None] = lambda count: None,
    ) -> None:
        self.repository = repository
        self.owner = new_owner()
        self.heartbeat_s = heartbeat_s
        self.timeout_s = timeout_s
        self.on_interrupted = on_interrupted
        self._task: asyncio.Task[None] | None = None
        self._reachable = True

    async def start(self) -> None:
        """Record this server, interrupt what dead servers left, then keep beating.

        Errors here propagate: a server that cannot reach its database does not start.
        """
        await self.repository.record_owner(self.owner)
        await self._interrupt_orphans()
        self._task = asyncio.create_task(self._beat(), name="technic-owner-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await asyncio.wait_for(
                    self.repository.record_owner(self.owner), timeout=self.heartbeat_s
                )
                await self._interrupt_orphans()
            except (StorageError, TimeoutError) as error:
                if self._reachable:
                    log.warning("cannot record that this server is alive: %s", error)
                self._reachable = False
            else:
                if not self._reachable:
                    log.info("recording that this server is alive again")
                self._reachable = True

    async def _interrupt_orphans(self) -> None:
        interrupted, released = [], []
        for owner in await self.repository.owners():
            if died_here(owner):
                interrupted += await self.repository.mark_interrupted(owner=owner)
                released += await self.repository.release_claims(owner=owner)
        interrupted += await self.repository.mark_interrupted(silent_for_s=self.timeout_s)
        released += await self.repository.release_claims(silent_for_s=self.timeout_s)
        if released:
            log.warning("put back in the fleet queue %d scan(s) of a stopped server", len(released))
        if interrupted:
            self.on_interrupted(len(interrupted))
            log.warning(
                "marked %d scan(s) left unfinished by a stopped server as interrupted",
                len(interrupted),
            )
        await self.repository.forget_silent_owners(self.timeout_s)
