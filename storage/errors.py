"""Exceptions raised by the storage package.

Tree::

    StorageError
    ├── DatabaseUnavailable        the server cannot be reached, refused us, went away or timed out
    ├── MigrationError             a migration file failed; ``file`` and ``line`` say where
    ├── IllegalTransition          a scan or stage was asked to move to a status it cannot reach
    ├── ScanNotFound (LookupError) a write named a scan id that is not stored
    └── InvalidInput (ValueError)  a filter, sort key, cursor, limit or record is unusable

Reads of an unknown scan return ``None`` rather than raise, so an HTTP handler can answer 404
without a try block; writes to an unknown scan raise ``ScanNotFound`` because they mean the
caller lost track of its own scan. Every asyncpg or socket error that escapes the package is
wrapped in one of these with ``raise ... from e``, so callers never need to import asyncpg.
"""

from __future__ import annotations


class StorageError(Exception):
    """Root of every error the storage package raises."""


class DatabaseUnavailable(StorageError):
    """PostgreSQL could not be reached or stopped answering; retrying later may succeed."""


class MigrationError(StorageError):
    """A migration could not be applied; its transaction was rolled back.

    ``file`` is the migration's file name and ``line`` the 1-based line of the statement
    (or of the error position, when PostgreSQL reports one), ``None`` when not known.
    """

    def __init__(self, file: str, line: int | None, message: str) -> None:
        where = f"{file} line {line}" if line is not None else file
        super().__init__(f"{where}: {message}")
        self.file = file
        self.line = line
        self.message = message


class IllegalTransition(StorageError):
    """A status change that the scan or stage state machine forbids (HTTP 409, typically).

    ``what`` names the scan or stage, ``current`` its status at the time, ``requested`` the
    status asked for; nothing was changed.
    """

    def __init__(self, what: str, current: str, requested: str) -> None:
        super().__init__(f"{what}: cannot move from {current} to {requested}")
        self.what = what
        self.current = current
        self.requested = requested


class ScanNotFound(StorageError, LookupError):
    """A write referred to a scan id that does not exist."""

    def __init__(self, scan_id: object) -> None:
        super().__init__(f"scan {scan_id} does not exist")
        self.scan_id = scan_id


class InvalidInput(StorageError, ValueError):
    """A caller-supplied value was rejected before reaching SQL; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
