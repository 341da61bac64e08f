"""``technic serve --processes N``: N server processes on one machine, one port, one fleet.

Why: one asyncio process fans progress out on one core; a machine with more cores can hold
more watchers if several server processes share its port. Each is an ordinary fleet member
(``REDIS_URL``): any of them serves any scan, whichever process the kernel hands a
connection to. The port is shared with ``SO_REUSEPORT`` (the kernel spreads new connections
over the processes); the machine's worker budget (``MAX_WORKERS``) is split between them, so
N processes do not start N full pools on the same cores.

This module only supervises: it opens the database once (starting the embedded PostgreSQL
when ``DATABASE_URL`` is unset, and applying migrations once, not N times at once), then
starts the children with that database's URL, forwards SIGINT/SIGTERM to them, and stops
them all when one of them ends (a supervisor above, such as systemd or Docker, restarts the
whole; an instance that died is noticed by the others as a fleet member would be).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys

from technic.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from technic.config import Settings
from technic.storage import StorageError

log = logging.getLogger(__name__)

# How long the children get to shut down (watchers told 1001, scans recorded) before a kill.
STOP_TIMEOUT_S = 30.0
# More processes than this on one machine would only compete for its cores.
MAX_PROCESSES = 64
# How often the supervisor looks for a child that ended.
POLL_S = 0.2
# A hidden flag of `technic serve`: bind the port with SO_REUSEPORT.
REUSE_PORT_FLAG = "--reuse-port"


def child_settings(settings: Settings, processes: int) -> Settings:
    """One child's settings: its share of the worker budget (at least one worker)."""
    return dataclasses.replace(settings, max_workers=max(1, settings.max_workers // processes))


def serve_processes(settings: Settings, processes: int) -> int:
    """Run ``processes`` children of ``technic serve`` on the settings' port until a signal
    or until one of them ends; return the exit status."""
    if settings.redis_url is None:
        print(
            "technic serve: error: --processes needs REDIS_URL: the processes share scans "
            "and progress as a fleet through Redis",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        return asyncio.run(_run(settings, processes))
    except StorageError as error:
        print(f"technic serve: error: {error}", file=sys.stderr)
        return EXIT_FAILED


async def _run(settings: Settings, processes: int) -> int:
    """Hold the database (and so the embedded server, which stops when its last process
    detaches) for the children's whole life; migrations are applied here, once."""
    from technic.storage import connect

    database = await connect(settings, max_size=1)
    try:
        share = child_settings(settings, processes)
        env = {
            **os.environ,
            "HOST": settings.host,
            "PORT": str(settings.port),
            "DATABASE_URL": database.url,
            "MAX_WORKERS": str(share.max_workers),
        }
        command = [sys.executable, "-m", "technic.cli", "serve", REUSE_PORT_FLAG]
        children = [subprocess.Popen(command, env=env) for _ in range(processes)]
        log.info(
            "technic: %d server processes on http://%s:%s, %d workers each",
            processes,
            settings.host,
            settings.port,
            share.max_workers,
        )
        return await _supervise(children)
    finally:
        await database.close()


async def _supervise(children: list[subprocess.Popen[bytes]]) -> int:
    """Wait for a signal or for a child to end, then stop them all; the exit status is 0
    after a signal, else the status of the child that ended first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    ended: subprocess.Popen[bytes] | None = None
    while ended is None and not stop.is_set():
        ended = next((child for child in children if child.poll() is not None), None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL_S)
    if ended is not None:
        log.error(
            "technic: server process %d ended (status %s): stopping all",
            ended.pid,
            ended.returncode,
        )
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    await asyncio.gather(*(asyncio.to_thread(_wait, child) for child in children))
    if ended is None:
        return EXIT_OK
    return ended.returncode or EXIT_FAILED


def _wait(child: subprocess.Popen[bytes]) -> None:
    """Wait for a child, killing it when it outstays STOP_TIMEOUT_S."""
    try:
        child.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
