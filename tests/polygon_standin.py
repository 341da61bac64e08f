"""A local stand-in of the Massive (Polygon.io) REST API, serving the bundled sample.

It answers the endpoints technic uses with the real JSON shapes (checked against the
official client's test fixtures): grouped daily bars per day (no ``results`` on weekends,
holidays and days the sample lacks, such as the two days of Hurricane Sandy), one ticker's
daily bars in pages linked by ``next_url`` (a cursor; the key is never in it), the list of
active common stocks and one ticker's details (an SIC code per sample sector). Bars whose
fields the sample lacks (a partial or empty row) are left out, as the real API never sends
a bar with a missing field.

Faults a test can switch on: a 429 for every n-th request (with or without
``Retry-After``), a number of 500s for a ticker or a day, and a split (every bar before
the ex-date divided by the ratio, volume multiplied, in adjusted answers). A wrong or
missing ``Authorization: Bearer`` key gets a 401. Every request is logged (path, query,
status, arrival time) so tests can count what a scan cost.

It runs on its own event loop in a thread, so synchronous code (``run_scan``, a
``technic`` subprocess) can call it from the test's thread. The tests and
``tests/bench/bench_polygon.py`` both use it.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiohttp import web
from technic.engine import sample
from technic.engine.block import PRICE_FIELDS
from technic.engine.polygon.calendar import day_start_ms

TOO_MANY = (
    "You've exceeded the maximum requests per minute, please wait or upgrade your "
    "subscription to continue. https://polygon.io/pricing"
)
# One SIC code per sample sector, so the market universe has sectors to filter on.
SIC_BY_SECTOR = {
    "Communication Services": ("4813", "TELEPHONE COMMUNICATIONS (NO RADIOTELEPHONE)"),
    "Consumer Discretionary": ("5331", "RETAIL-VARIETY STORES"),
    "Consumer Staples": ("2080", "BEVERAGES"),
    "Energy": ("1311", "CRUDE PETROLEUM & NATURAL GAS"),
    "Financials": ("6022", "STATE COMMERCIAL BANKS"),
    "Health Care": ("2834", "PHARMACEUTICAL PREPARATIONS"),
    "Industrials": ("3560", "GENERAL INDUSTRIAL MACHINERY & EQUIPMENT"),
    "Information Technology": ("7372", "SERVICES-PREPACKAGED SOFTWARE"),
    "Materials": ("2800", "CHEMICALS & ALLIED PRODUCTS"),
    "Real Estate": ("6798", "REAL ESTATE INVESTMENT TRUSTS"),
    "Utilities": ("4911", "ELECTRIC SERVICES"),
}


@dataclass(frozen=True)
class Logged:
    path: str
    query: dict[str, str]
    status: int
    at: float

    @property
    def is_bars(self) -> bool:
        return self.path.startswith("/v2/aggs/")

    @property
    def is_grouped(self) -> bool:
        return self.path.startswith("/v2/aggs/grouped/")


@dataclass
class Faults:
    every_nth_429: int | None = None
    retry_after_s: int | None = None
    # a ticker or a day (YYYY-MM-DD) -> how many 500s before it answers (-1: never)
    server_errors: dict[str, int] = field(default_factory=dict)
    latency_s: float = 0.0


def _request_id() -> str:
    return uuid.uuid4().hex


class _Data:
    """The sample as the API would serve it: complete bars only."""

    def __init__(self) -> None:
        block = sample.load_sample_block()
        self.dates = block.dates.astype("datetime64[D]")
        self.row_of = {d.astype(dt.date): t for t, d in enumerate(self.dates)}
        self.symbols = [str(s) for s in block.symbols]
        self.column = {s: i for i, s in enumerate(self.symbols)}
        self.values = {name: np.asarray(block.field(name)) for name in PRICE_FIELDS}
        self.complete = np.all([np.isfinite(v) for v in self.values.values()], axis=0)
        self.universe = sample.load_sample_universe()
        self.times = np.array([day_start_ms(d.astype(dt.date)) for d in self.dates])


class StandIn:
    """The stand-in server; ``url`` is its base URL once ``start`` has returned."""

    def __init__(
        self, api_key: str, *, page_size: int = 50_000, list_page_size: int = 1000
    ) -> None:
        self.api_key = api_key
        self.page_size = page_size
        self.list_page_size = list_page_size
        self.faults = Faults()
        self.splits: dict[str, tuple[dt.date, float]] = {}
        self.log: list[Logged] = []
        self._data = _Data()
        self._bodies: dict[tuple[Any, ...], bytes] = {}
        self._count = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StandIn:
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._start())
            started.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="polygon-standin", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the stand-in did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        runner = self._runner
        if runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop).result(10)
            # the connections it closed finish closing on the loop's next turns
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0.1), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v2/aggs/grouped/locale/us/market/stocks/{day}", self._grouped)
        app.router.add_get("/v2/aggs/ticker/{ticker}/range/1/day/{start}/{end}", self._ticker)
        app.router.add_get("/v3/reference/tickers", self._tickers)
        app.router.add_get("/v3/reference/tickers/{ticker}", self._details)
        app.middlewares.append(self._gate)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    # -- what tests read -----------------------------------------------------------------

    def bar_requests(self) -> list[Logged]:
        with self._lock:
            return [r for r in self.log if r.is_bars]

    def reset_log(self) -> None:
        with self._lock:
            self.log.clear()

    def complete_symbols(self, end: dt.date, bars: int) -> set[str]:
        """Symbols whose every bar in the ``bars`` sessions up to ``end`` is complete in
        the sample (listed since, with no partial row): the API serves them exactly."""
        data = self._data
        stop = int(np.searchsorted(data.dates, np.datetime64(end, "D"), side="right"))
        window = slice(max(0, stop - bars), stop)
        listed = np.isfinite(data.values["close"][window])
        complete = data.complete[window]
        ok = (complete | ~listed).all(axis=0) & listed.any(axis=0)
        # a symbol listed mid-window must have no gap after its first bar either
        first = np.argmax(listed, axis=0)
        for column in np.flatnonzero(ok):
            if not complete[first[column] :, column].all():
                ok[column] = False
        return {data.symbols[c] for c in np.flatnonzero(ok)}

    # -- the API -----------------------------------------------------------------------

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        with self._lock:
            self._count += 1
            count = self._count
        if self.faults.latency_s:
            await asyncio.sleep(self.faults.latency_s)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            response = self._json(
                {"status": "ERROR", "request_id": _request_id(), "error": "Unknown API Key"},
                status=401,
            )
        elif self.faults.every_nth_429 and count % self.faults.every_nth_429 == 0:
            response = self._json(
                {"status": "ERROR", "request_id": _request_id(), "error": TOO_MANY}, status=429
            )
            if self.faults.retry_after_s is not None:
                response.headers["Retry-After"] = str(self.faults.retry_after_s)
        elif self._server_error(request):
            response = self._json(
                {"status": "ERROR", "request_id": _request_id(), "error": "Internal error"},
                status=500,
            )
        else:
            response = await handler(request)
        with self._lock:
            self.log.append(
                Logged(request.path, dict(request.query), response.status, time.monotonic())
            )
        return response

    def _server_error(self, request: web.Request) -> bool:
        info = request.match_info
        target = info.get("ticker") or info.get("day")
        remaining = self.faults.server_errors.get(target or "")
        if remaining is None or remaining == 0:
            return False
        if remaining > 0:
            self.faults.server_errors[target] = remaining - 1  # type: ignore[index]
        return True

    def _json(self, body: dict[str, Any], status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")

    def _bar(self, symbol: str, row: int, adjusted: bool) -> dict[str, Any]:
        data = self._data
        column = data.column[symbol]
        values = {name: float(data.values[name][row, column]) for name in PRICE_FIELDS}
        split = self.splits.get(symbol)
        if adjusted and split is not None and data.dates[row].astype(dt.date) < split[0]:
            ratio = split[1]
            for name in ("open", "high", "low", "close"):
                values[name] = values[name] / ratio
            values["volume"] = values["volume"] * ratio
        return {
            "v": values["volume"],
            "vw": round((values["high"] + values["low"] + values["close"]) / 3, 4),
            "o": values["open"],
            "c": values["close"],
            "h": values["high"],
            "l": values["low"],
            "t": int(data.times[row]),
            "n": max(1, int(values["volume"] // 250)),
        }

    def _cached(self, key: tuple[Any, ...], build: Any) -> web.Response:
        """Answers are built once per request and splits in force (they are the CPU of a
        benchmark run that shares the machine with the client)."""
        key = (*key, tuple(sorted(self.splits.items())))
        body = self._bodies.get(key)
        if body is None:
            body = self._bodies[key] = orjson.dumps(build())
        return web.Response(body=body, content_type="application/json")

    async def _grouped(self, request: web.Request) -> web.Response:
        day = dt.date.fromisoformat(request.match_info["day"])
        adjusted = request.query.get("adjusted", "true") == "true"
        return self._cached(("day", day, adjusted), lambda: self._grouped_body(day, adjusted))

    def _grouped_body(self, day: dt.date, adjusted: bool) -> dict[str, Any]:
        data = self._data
        row = data.row_of.get(day)
        body: dict[str, Any] = {"queryCount": 0, "resultsCount": 0, "adjusted": adjusted}
        if row is not None:
            results = []
            for symbol in data.symbols:
                if data.complete[row, data.column[symbol]]:
                    results.append({"T": symbol, **self._bar(symbol, row, adjusted)})
            body = {
                "queryCount": len(results),
                "resultsCount": len(results),
                "adjusted": adjusted,
                "results": results,
            }
        body.update(status="OK", request_id=_request_id(), count=body["resultsCount"])
        return body

    async def _ticker(self, request: web.Request) -> web.Response:
        ticker = request.match_info["ticker"]
        start = dt.date.fromisoformat(request.match_info["start"])
        end = dt.date.fromisoformat(request.match_info["end"])
        adjusted = request.query.get("adjusted", "true") == "true"
        limit = min(int(request.query.get("limit", "5000")), 50_000, self.page_size)
        offset = (
            int(base64.urlsafe_b64decode(request.query["cursor"]))
            if "cursor" in request.query
            else 0
        )
        key = ("ticker", ticker, start, end, adjusted, limit, offset)
        return self._cached(
            key,
            lambda: self._ticker_body(request.path, ticker, start, end, adjusted, limit, offset),
        )

    def _ticker_body(
        self,
        path: str,
        ticker: str,
        start: dt.date,
        end: dt.date,
        adjusted: bool,
        limit: int,
        offset: int,
    ) -> dict[str, Any]:
        data = self._data
        rows: list[int] = []
        if ticker in data.column:
            column = data.column[ticker]
            first = int(np.searchsorted(data.dates, np.datetime64(start, "D")))
            last = int(np.searchsorted(data.dates, np.datetime64(end, "D"), side="right"))
            rows = [t for t in range(first, last) if data.complete[t, column]]
        page = rows[offset : offset + limit]
        results = [self._bar(ticker, t, adjusted) for t in page]
        body: dict[str, Any] = {
            "ticker": ticker,
            "queryCount": len(results),
            "resultsCount": len(results),
            "adjusted": adjusted,
        }
        if results:
            body["results"] = results
        body.update(status="OK", request_id=_request_id(), count=len(results))
        if offset + limit < len(rows):
            cursor = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
            body["next_url"] = (
                f"{self.url}{path}?cursor={cursor}&adjusted={str(adjusted).lower()}"
                f"&sort=asc&limit={limit}"
            )
        return body

    async def _tickers(self, request: web.Request) -> web.Response:
        universe = self._data.universe
        order = np.argsort(universe.symbols.astype(str))
        offset = (
            int(base64.urlsafe_b64decode(request.query["cursor"]))
            if "cursor" in request.query
            else 0
        )
        limit = min(int(request.query.get("limit", "100")), 1000, self.list_page_size)
        page = order[offset : offset + limit]
        results = [
            {
                "ticker": str(universe.symbols[i]),
                "name": str(universe.names[i]),
                "market": "stocks",
                "locale": "us",
                "primary_exchange": "XNYS",
                "type": "CS",
                "active": True,
                "currency_name": "usd",
                "last_updated_utc": "2017-08-11T00:00:00Z",
            }
            for i in page
        ]
        body: dict[str, Any] = {
            "results": results,
            "status": "OK",
            "request_id": _request_id(),
            "count": len(results),
        }
        if offset + limit < len(order):
            cursor = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
            body["next_url"] = f"{self.url}/v3/reference/tickers?cursor={cursor}"
        return self._json(body)

    async def _details(self, request: web.Request) -> web.Response:
        ticker = request.match_info["ticker"]
        universe = self._data.universe
        where = np.flatnonzero(universe.symbols == ticker)
        if len(where) == 0:
            return self._json(
                {
                    "status": "NOT_FOUND",
                    "request_id": _request_id(),
                    "message": "Ticker not found.",
                },
                status=404,
            )
        i = int(where[0])
        code, description = SIC_BY_SECTOR.get(str(universe.sectors[i]), ("", ""))
        return self._json(
            {
                "results": {
                    "ticker": ticker,
                    "name": str(universe.names[i]),
                    "market": "stocks",
                    "locale": "us",
                    "type": "CS",
                    "active": True,
                    "sic_code": code,
                    "sic_description": description,
                },
                "status": "OK",
                "request_id": _request_id(),
            }
        )


def ratings(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {row["symbol"]: row["tech_rating"] for row in rows}


def assert_same_ratings(
    got: list[dict[str, Any]], expected: list[dict[str, Any]], symbols: set[str]
) -> None:
    """The rows of ``symbols`` rank in the same order with ratings equal to 1e-9."""
    mine = [r for r in got if r["symbol"] in symbols]
    theirs = [r for r in expected if r["symbol"] in symbols]
    assert [r["symbol"] for r in mine] == [r["symbol"] for r in theirs]
    for a, b in zip(mine, theirs, strict=True):
        assert math.isclose(a["tech_rating"], b["tech_rating"], rel_tol=1e-9, abs_tol=1e-9), (
            a["symbol"],
            a["tech_rating"],
            b["tech_rating"],
        )
