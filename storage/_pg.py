"""asyncpg plumbing shared by the pool, the migration runner and the repository.

Kept in one place so that the rule "no asyncpg or socket exception leaves the package
unwrapped" is implemented once: every database call runs inside ``translate_errors``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from technic.storage.errors import DatabaseUnavailable, StorageError

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# Server-side conditions meaning "this database cannot serve us now": connection class 08,
# shutdowns and statement timeouts (57xxx), too many connections, missing database, bad login.
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, unknown host
    TimeoutError,  # connect or command timeout
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
)


def is_unavailable(exc: BaseException) -> bool:
    """True for errors that mean the server is down, unreachable, gone or too slow."""
    if isinstance(exc, _UNAVAILABLE_ERRORS):
        return True
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # asyncpg's protocol state machine trips like this when the server ends the session
        # while a command is being sent; the pool discards the connection afterwards
        return True
    # asyncpg reports use of a connection or pool that is closed (or closing) this way
    return isinstance(exc, asyncpg.InterfaceError) and "is clos" in str(exc)


def describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


@contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Re-raise asyncpg and socket errors as ``DatabaseUnavailable`` or ``StorageError``."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        if is_unavailable(e):
            raise DatabaseUnavailable(f"{action}: database unavailable: {describe(e)}") from e
        if isinstance(e, asyncpg.PostgresError | asyncpg.InterfaceError):
            raise StorageError(f"{action}: {describe(e)}") from e
        raise


def db_call(action: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorator form of ``translate_errors`` for repository methods."""

    def wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            with translate_errors(action):
                return await fn(*args, **kwargs)

        return inner

    return wrap


def redact_url(url: str) -> str:
    """The URL with its password replaced, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable database URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


_JSONB_VERSION = b"\x01"
_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def encode_jsonb(value: Any) -> bytes:
    # Binary jsonb is a version byte followed by the JSON text; orjson writes the shortest
    # float representation that reads back to the same double, so rows round-trip exactly.
    return _JSONB_VERSION + orjson.dumps(value, option=_ORJSON_OPTIONS)


def decode_jsonb(data: bytes) -> Any:
    return orjson.loads(memoryview(data)[1:])


def encode_json(value: Any) -> bytes:
    # the binary form of json is its text
    return orjson.dumps(value, option=_ORJSON_OPTIONS)


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection set-up: json and jsonb as Python objects through orjson, binary format."""
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=encode_jsonb,
        decoder=decode_jsonb,
        format="binary",
    )
    await conn.set_type_codec(
        "json",
        schema="pg_catalog",
        encoder=encode_json,
        decoder=orjson.loads,
        format="binary",
    )
