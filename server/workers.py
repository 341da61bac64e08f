"""The worker process pool shared by the CLI and the server.

Workers are started by ``forkserver`` rather than ``fork``: forking a process that runs an
event loop and threads copies their locks in whatever state they were in. Each worker
imports the engine once at start-up (so the first chunk does not pay for numpy and scipy)
and ignores SIGINT, so Ctrl-C reaches only the parent, which cancels the scan cleanly
instead of every worker dying with a traceback.
"""

from __future__ import annotations

import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor


def _initialise_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import engine.chunk  # noqa: F401  (warm the import in the worker)


def worker_pool(max_workers: int) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["engine.chunk"])
    return ProcessPoolExecutor(
        max_workers=max_workers, mp_context=context, initializer=_initialise_worker
    )
