"""Exceptions raised by the engine.

Tree::

    TechnicError
    ├── InvalidConfig (also ValueError)   a ScanConfig field is out of range or unknown
    ├── DataError (also ValueError)       a universe or price source cannot be read
    │   └── ProviderAccessDenied          the provider refused the API key (401/403)
    ├── WorkerDied                        a worker process of the executor died mid-scan
    └── ScanCancelled                     the caller's cancel event was set

Callers that only care about "bad input" can catch ``ValueError``; the server maps
``InvalidConfig`` to HTTP 400 with the offending field.
"""

from __future__ import annotations


class TechnicError(Exception):
    """Root of every error the engine raises on purpose."""


class InvalidConfig(TechnicError, ValueError):
    """A configuration value is wrong; ``field`` names it so a UI can point at it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class DataError(TechnicError, ValueError):
    """A data source is missing, unreadable or has no usable rows."""


class ProviderAccessDenied(DataError):
    """The price provider refused the key (or what the key's plan allows): every request
    would fail the same way, so the scan stops at once. The message names the setting,
    never its value."""


class WorkerDied(TechnicError):
    """The executor broke (a worker was killed, e.g. out of memory); the scan cannot finish."""


class ScanCancelled(TechnicError):
    """Raised inside the engine when the cancel event is seen between chunks."""
