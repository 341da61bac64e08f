"""The worker process pool shared by the CLI and the server.

Workers are started by ``forkserver`` rather than ``fork``: forking a process that runs an
event loop and threads copies their locks in whatever state they were in. Each worker
imports the engine once at start-up (so the first chunk does not pay for importing numpy)
and ignores SIGINT, so Ctrl-C reaches only the parent, which cancels the scan cleanly
instead of every worker dying with a traceback. The compiled indicator kernels are loaded
(from numba's on-disk cache) while the scan is still loading its data, so the first chunk
does not pay for them.

Workers die with the process that started them. A worker's own parent is the forkserver,
and nothing tells a worker when the server or ``technic scan`` is killed with SIGKILL: it
would wait for work forever, keeping the forkserver (which exits only when the last process
holding its "alive" pipe is gone) and the resource tracker alive with it. So each worker
watches the starting process's sentinel (a pipe end that reads EOF the moment that process
is gone, however it died) from a thread and exits then; the indicator kernels release the
GIL, so the watcher runs even mid-chunk.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from technic.engine import indicators

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_FREED_MEMORY_BYTES = 1 << 30
MMAP_THRESHOLD_BYTES = 256 << 20
EXIT_PARENT_DIED = 70  # a worker's exit code when it stops because its parent is gone


def keep_freed_memory() -> None:
    """Stop glibc from handing each chunk's freed arrays back to the kernel.

    Every chunk allocates the same few megabytes of arrays; with glibc's defaults large
    blocks are mmap'd and unmapped each time, so every chunk page-faults its arrays in
    afresh (measured: 25,800 faults per worker for 8 chunks, against 1,080 with this).
    A no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_MEMORY_BYTES)
    except (OSError, AttributeError):
        return


def exit_with_parent() -> None:
    """Exit this process as soon as the process that started it is gone, however it died."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(EXIT_PARENT_DIED)

    threading.Thread(target=watch, name="technic-parent-watch", daemon=True).start()


def _initialise_worker() -> None:
    exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_freed_memory()
    indicators.warm_up()


def _ready() -> None:
    """A no-op task: submitting one per worker starts them all now, not at the first chunk."""


def worker_pool(max_workers: int) -> ProcessPoolExecutor:
    """A pool whose workers start at once, while the scan is still loading its data."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["technic.engine.chunk"])
    pool = ProcessPoolExecutor(
        max_workers=max_workers, mp_context=context, initializer=_initialise_worker
    )
    for _ in range(max_workers):
        pool.submit(_ready)
    return pool


class WorkerPool:
    """The shared pool, rebuilt when a worker process dies.

    A worker killed mid-chunk breaks a ``ProcessPoolExecutor`` for good: every later
    ``submit`` raises ``BrokenProcessPool``. The scan that was running fails with a clear
    error (the job manager says so); the next ``submit`` here builds a fresh pool, so the
    next scan runs as if nothing happened.

    Several scan threads submit at once, so they all see the same breakage: the rebuild
    happens under a lock, and only the thread that still finds the broken pool in place
    replaces it; the others submit to the pool it built.
    """

    def __init__(self, max_workers: int) -> None:
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._pool = worker_pool(max_workers)
        self.rebuilds = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        pool = self._pool
        try:
            return pool.submit(fn, *args, **kwargs)
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = worker_pool(self._max_workers)
                    self.rebuilds += 1
                pool = self._pool
            return pool.submit(fn, *args, **kwargs)

    def worker_pids(self) -> list[int]:
        return [process.pid for process in (self._pool._processes or {}).values()]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            pool = self._pool
        pool.shutdown(wait=wait, cancel_futures=cancel_futures)
