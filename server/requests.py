"""Validation of request input, before anything is awaited or started.

Pure functions: bytes and query strings in, small records or ``RequestError`` out. The
HTTP layer turns a ``RequestError`` into ``{"error": ..., "field": ...}`` with its status,
in one place (``server.errors``), so no handler builds error responses by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from technic.engine.errors import InvalidConfig
from technic.engine.scan_config import ScanConfig
from technic.server.cursor import Cursor
from technic.storage import MAX_OFFSET, MAX_PAGE_SIZE, MAX_RANK, RESULT_SORTS

API_PROVIDERS = ("sample", "synthetic", "polygon", "massive")
START_FIELDS = (
    "max_symbols",
    "min_tech_rating",
    "sectors",
    "industries",
    "symbols",
    "provider",
    "as_of",
    "trade_style",
    "account_size",
    "risk_pct",
    "target_rr",
    "bars",
    "seed",
    "lookback_bars",
    "universe",
)
DEFAULT_API_MAX_SYMBOLS = 50


class RequestError(Exception):
    """Bad input: ``status`` is the HTTP status, ``field`` what to fix (if one field)."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        status: int = 400,
        retry_after_s: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status
        self.retry_after_s = retry_after_s
        self.extra = extra or {}


@dataclass(frozen=True)
class StartRequest:
    config: ScanConfig
    async_mode: bool


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise RequestError("request body is empty; send a JSON object")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise RequestError(f"request body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise RequestError(f"request body must be a JSON object, got {type(value).__name__}")
    return value


def parse_start(body: bytes, *, max_symbols_cap: int) -> StartRequest:
    """The seed's body (max_symbols, min_tech_rating, sectors, async_mode) and the rest."""
    values = parse_json_object(body)
    async_mode = values.pop("async_mode", True)
    if not isinstance(async_mode, bool):
        raise RequestError("must be true or false", field="async_mode")
    for key in values:
        if key not in START_FIELDS:
            raise RequestError(
                f"unknown field; accepted: async_mode, {', '.join(START_FIELDS)}", field=key
            )
    provider = values.get("provider", "sample")
    if provider not in API_PROVIDERS:
        raise RequestError(f"must be one of {', '.join(API_PROVIDERS)}", field="provider")
    values.setdefault("max_symbols", DEFAULT_API_MAX_SYMBOLS)
    max_symbols = values["max_symbols"]
    if (
        isinstance(max_symbols, int)
        and not isinstance(max_symbols, bool)
        and not 1 <= max_symbols <= max_symbols_cap
    ):
        raise RequestError(
            f"must be between 1 and {max_symbols_cap}, got {max_symbols}", field="max_symbols"
        )
    try:
        config = ScanConfig.from_dict(values)
    except InvalidConfig as error:
        raise RequestError(error.message, field=error.field) from None
    except TypeError as error:
        raise RequestError(str(error)) from None
    return StartRequest(config=config, async_mode=async_mode)


@dataclass(frozen=True)
class ResultsQuery:
    """What ``GET /scan/results/{id}`` asks for. ``limit`` None (CSV only) means every row."""

    output: str
    sort: str
    descending: bool
    limit: int | None
    offset: int


def parse_results_query(query: dict[str, str] | Any) -> ResultsQuery:
    """JSON answers a page of at most ``MAX_PAGE_SIZE`` rows (default that many); CSV has no
    page limit: every row, or ``limit`` rows, after ``offset``, in the same order."""
    output = query.get("format", "json")
    if output not in ("json", "csv"):
        raise RequestError("must be json or csv", field="format")
    if output == "json":
        limit = parse_int(query, "limit", MAX_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    else:
        limit = parse_int(query, "limit", None, 1, MAX_RANK)
    offset = parse_int(query, "offset", 0, 0, MAX_OFFSET) or 0
    sort = query.get("sort", "rank")
    descending = sort.startswith("-")
    sort = sort.removeprefix("-")
    if sort not in RESULT_SORTS:
        raise RequestError(
            f"must be one of {', '.join(RESULT_SORTS)} (prefix - for descending)", field="sort"
        )
    order = query.get("order")
    if order is not None:
        if order not in ("asc", "desc"):
            raise RequestError("must be asc or desc", field="order")
        descending = order == "desc"
    return ResultsQuery(output, sort, descending, limit, offset)


def parse_int(
    query: dict[str, str] | Any, name: str, default: int | None, low: int, high: int
) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RequestError(f"must be a whole number, got {raw!r}", field=name) from None
    if not low <= value <= high:
        raise RequestError(f"must be between {low} and {high}, got {value}", field=name)
    return value


def parse_cursor(raw: str | None, name: str) -> Cursor | None:
    """A resume cursor (``EPOCH.SEQ``, or a bare seq) from ``name``; None when absent."""
    if raw is None or raw.strip() == "":
        return None
    try:
        return Cursor.parse(raw)
    except ValueError as error:
        raise RequestError(str(error), field=name) from None
