"""The ``polygon`` provider: today's market from the Massive (Polygon.io) REST API.

A fetch works in rounds. Each round reads what the bar store knows about the scan's
symbols over its window (the ``lookback_bars`` sessions ending at the last final session,
or ``as_of``), plans the fewest requests that fetch the rest (``plan.plan_requests``:
grouped days or per-symbol windows), sends them through the shared rate limiter, and keeps
every answer in the store. A round can leave work for the next one: a grouped day that
answered without results is a closure the calendar did not know (the window then reaches
one session further back), and a stored bar that no longer matches the provider's is a
split (that symbol's stored history is retired and fetched again). Requests that fail after
their retries are not asked again in the same scan: a symbol becomes a failure row naming
the reason, and so does a grouped day (named by its date; the day is left out of the block,
as a holiday would be). Finally the block is built from the store alone.

The fetch's cache hit ratio (``FetchResult.served_from_store``) is counted in
symbol-sessions: the share of the scan's window (symbols x sessions) that the store knew
before the first round, i.e. data not fetched over HTTP. Cells rather than requests,
because what a request brings depends on the plan (a grouped day serves every symbol of
the day), while a cell is the same unit whichever way it was fetched.

Today's bar is never asked for before it is final (``calendar.last_final_session``), so a
partial day is never kept as if it were complete.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import tempfile
import time
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from technic.engine import sample
from technic.engine.block import PRICE_FIELDS, PriceBlock, Universe
from technic.engine.errors import DataError
from technic.engine.polygon.batch import Request, RequestBatch
from technic.engine.polygon.calendar import (
    NEW_YORK,
    bar_date,
    is_session,
    last_final_session,
    sessions_ending,
)
from technic.engine.polygon.plan import Plan, plan_requests
from technic.engine.polygon.source import MISSING_KEY_MESSAGE, PolygonSource
from technic.engine.polygon.store import (
    BarStore,
    Changes,
    DayBars,
    StoreView,
    SymbolBars,
    SymbolUpdate,
    day_number,
)
from technic.engine.polygon.tickers import market_universe
from technic.engine.providers import QUIET, FetchResult, StageProgress
from technic.engine.scan_config import ScanConfig
from technic.engine.universe import read_universe_file

log = logging.getLogger(__name__)

# Per-symbol requests reach this many sessions before the window, at no extra cost, so a
# closure the calendar does not know still leaves a full window of bars; but not further
# back than the free plan's history (two years), which answers an older day with a 403.
MARGIN_SESSIONS = 10
FREE_PLAN_HISTORY = dt.timedelta(days=730)
MAX_ROUNDS = 4
# More sessions than this answered without results in one round is not a run of closures
# the calendar missed but a provider without that history (a plan's limit, a stand-in):
# nothing is learned from them, they are reported.
MAX_CLOSURES_LEARNED = 3
COMMIT_EVERY = 256
COMMIT_INTERVAL_S = 2.0
PER_SYMBOL_LIMIT = 50_000
# Two bars are the same when every field agrees to this relative tolerance.
SAME_BAR_RTOL = 1e-9
_BAR_KEYS = {"open": "o", "high": "h", "low": "l", "close": "c", "volume": "v"}


def grouped_path(day: dt.date) -> str:
    return f"/v2/aggs/grouped/locale/us/market/stocks/{day.isoformat()}"


def range_path(symbol: str, start: dt.date, end: dt.date) -> str:
    return f"/v2/aggs/ticker/{quote(symbol, safe='')}/range/1/day/{start}/{end}"


def _column(bars: list[dict[str, Any]], key: str) -> np.ndarray:
    """One field of many bars as float64, NaN where a bar lacks it (or has no number)."""
    values = [bar.get(key) for bar in bars]
    try:
        return np.array(values, dtype=np.float64)  # None becomes NaN
    except (TypeError, ValueError):
        return np.array(
            [float(v) if isinstance(v, int | float) else np.nan for v in values], np.float64
        )


def _differs(stored: dict[str, np.ndarray], fetched: dict[str, np.ndarray]) -> np.ndarray:
    """Per bar, whether a stored bar and the provider's disagree (both must exist)."""
    differs = np.zeros(len(stored["close"]), dtype=bool)
    for name in PRICE_FIELDS:
        a, b = stored[name], fetched[name]
        present = np.isfinite(a), np.isfinite(b)
        both = present[0] & present[1]
        close = np.isclose(a, b, rtol=SAME_BAR_RTOL, atol=0.0)
        differs |= (present[0] != present[1]) | (both & ~close)
    return differs


class PolygonProvider:
    """Bars from the API through the bar store; the universe as ``config.universe`` says."""

    def __init__(self, config: ScanConfig, source: PolygonSource | None) -> None:
        self.config = config
        self.source = source

    def universe(self, progress: StageProgress = QUIET) -> Universe:
        if self.config.universe == "market":
            return market_universe(self._source(), self.config, progress)
        if self.config.universe_file:
            return read_universe_file(self.config.universe_file)
        return sample.load_sample_universe()

    def bar_count(self) -> int:
        """At most the window and the sessions before it that per-symbol requests reach:
        a scan too large for MAX_SCAN_CELLS is refused before a request is spent."""
        return self.config.lookback_bars + MARGIN_SESSIONS

    def identity(self) -> str:
        """Same end day, window and store generation (bumped by every detected split):
        the same bars."""
        source = self._source()
        root = source.store_root
        view = BarStore(root).view() if root else StoreView(Path())
        end = self.end_day(source, view)
        generation = view.generation if root else f"unstored:{time.time_ns()}"
        return f"polygon:v1:{source.host_key}:{end}:{self.config.lookback_bars}:{generation}"

    def end_day(self, source: PolygonSource, view: StoreView) -> dt.date:
        """The last session of the window: ``as_of`` (or the last session before it), and
        never a session whose bar is not final yet."""
        end = last_final_session(source.now())
        if self.config.as_of is not None:
            end = min(end, self.config.as_of)
        return sessions_ending(end, 1, view.closed_days)[0]

    def fetch(self, symbols: np.ndarray, progress: StageProgress) -> FetchResult:
        source = self._source()
        with _store_root(source) as root:
            return _Fetch(self, source, BarStore(root), symbols, progress).run()

    def _source(self) -> PolygonSource:
        if self.source is None:
            raise DataError(MISSING_KEY_MESSAGE)
        return self.source


@contextlib.contextmanager
def _store_root(source: PolygonSource) -> Iterator[Path]:
    """The bar store's folder; without one (``USE_CACHE`` off), a scratch store."""
    if source.store_root is not None:
        yield source.store_root
        return
    with tempfile.TemporaryDirectory(prefix="technic-bars-") as scratch:
        yield Path(scratch)


class _Fetch:
    """One fetch of one scan's symbols; see the module docstring."""

    def __init__(
        self,
        provider: PolygonProvider,
        source: PolygonSource,
        store: BarStore,
        symbols: np.ndarray,
        progress: StageProgress,
    ) -> None:
        self.config = provider.config
        self.store = store
        self.symbols = np.asarray(symbols, dtype=object)
        self.column = {str(s): i for i, s in enumerate(self.symbols)}
        self.batch = RequestBatch(source.client, progress)
        self.end = provider.end_day(source, store.view())
        self.history_floor = source.now().astimezone(NEW_YORK).date() - FREE_PLAN_HISTORY
        self.failed_symbols: dict[str, str] = {}
        self.failed_days: dict[dt.date, str] = {}
        self.empty_days: list[dt.date] = []
        self.changes = Changes()
        self.committed_at = time.monotonic()
        self.served_from_store: float | None = None

    def run(self) -> FetchResult:
        for _ in range(MAX_ROUNDS):
            view = self.store.view()
            window = self._window(view)
            known = view.coverage(self.symbols, window)
            if self.served_from_store is None and known.size:
                self.served_from_store = float(known.mean())
            known[np.isin(self.symbols, list(self.failed_symbols))] = True
            known[:, np.isin(window, list(self.failed_days))] = True
            plan = plan_requests(known, self.symbols, window)
            if plan.requests == 0:
                break
            log.info("polygon: fetching %s", plan.describe())
            self._round(plan, view, window)
        return self._assemble(self.store.view())

    def _window(self, view: StoreView) -> list[dt.date]:
        return sessions_ending(self.end, self.config.lookback_bars, view.closed_days)

    def _fetch_start(self, view: StoreView) -> dt.date:
        window_start = self._window(view)[0]
        count = self.config.lookback_bars + MARGIN_SESSIONS
        margin_start = sessions_ending(self.end, count, view.closed_days)[0]
        return max(margin_start, min(window_start, self.history_floor))

    def _round(self, plan: Plan, view: StoreView, window: list[dt.date]) -> None:
        round_ns = time.time_ns()
        start = self._fetch_start(view)
        stored, _ = view.load(self.symbols, window)
        row_of = {day: t for t, day in enumerate(window)}
        requests = [Request(("day", d), grouped_path(d), {"adjusted": "true"}) for d in plan.days]
        params = {"adjusted": "true", "sort": "asc", "limit": PER_SYMBOL_LIMIT}
        requests += [
            Request(("symbol", s), range_path(s, start, self.end), params) for s in plan.symbols
        ]
        pages: dict[Hashable, list[dict[str, Any]]] = {}

        def on_answer(key: Hashable, answer: dict[str, Any]) -> str | None:
            kind, name = key  # type: ignore[misc]
            results = answer.get("results") or []
            pages.setdefault(key, []).extend(r for r in results if isinstance(r, dict))
            next_url = answer.get("next_url")
            if kind == "symbol" and isinstance(next_url, str) and next_url:
                return next_url
            bars = pages.pop(key)
            if kind == "day":
                self._keep_day(name, bars, view, stored, row_of, round_ns)
            else:
                self._keep_symbol(name, bars, stored, window, start, round_ns)
            return None

        def on_failure(key: Hashable, reason: str) -> None:
            kind, name = key  # type: ignore[misc]
            pages.pop(key, None)
            if kind == "day":
                self.failed_days[name] = f"bars of every symbol for {name}: {reason}"
            else:
                self.failed_symbols[name] = f"the provider did not answer: {reason}"

        self.batch.plan(plan.requests, plan.describe())
        try:
            self.batch.run(requests, on_answer, on_failure, self._commit_now_and_then)
            self._learn_closures()
        finally:
            self._commit()

    def _learn_closures(self) -> None:
        """Sessions that answered without results: closures the calendar did not know,
        unless there are too many of them (see ``MAX_CLOSURES_LEARNED``) or it is the last
        session (its bars may not be published yet)."""
        empty, self.empty_days = sorted(self.empty_days), []
        closures = [day for day in empty if day < self.end]
        if 0 < len(closures) <= MAX_CLOSURES_LEARNED:
            log.info("polygon: no bars on %s: the market was closed", closures)
            self.changes.closed.extend(closures)
            empty = [day for day in empty if day >= self.end]
        for day in empty:
            self.failed_days[day] = f"the provider has no bars for {day}" + (
                " yet" if day >= self.end else f" (nor for {len(empty) - 1} other sessions)"
            )

    def _keep_day(
        self,
        day: dt.date,
        bars: list[dict[str, Any]],
        view: StoreView,
        stored: dict[str, np.ndarray],
        row_of: dict[dt.date, int],
        round_ns: int,
    ) -> None:
        fetched_ns = time.time_ns()
        named = [bar for bar in bars if isinstance(bar.get("T"), str) and bar["T"]]
        if not named:
            self.empty_days.append(day)
            return
        rows = {name: _column(named, key) for name, key in _BAR_KEYS.items()}
        day_bars = DayBars.build(day, [b["T"] for b in named], rows)
        changed = self._changed_on_day(day_bars, view.day_bars(day), stored, row_of.get(day))
        if changed:
            log.info("polygon: adjusted bars changed on %s (a split) for %s", day, sorted(changed))
            self.changes.invalidated.extend((symbol, round_ns) for symbol in sorted(changed))
        self.changes.days.append((day_bars, fetched_ns))

    def _changed_on_day(
        self,
        fetched: DayBars,
        previous: np.ndarray | None,
        stored: dict[str, np.ndarray],
        row: int | None,
    ) -> set[str]:
        """Symbols whose stored bar of this day differs from the one just fetched."""
        changed: set[str] = set()
        if len(fetched.symbols) == 0:
            return changed
        if row is not None and np.isfinite(stored["close"][row]).any():
            wanted = self.symbols.astype(str)
            at = np.minimum(np.searchsorted(fetched.symbols, wanted), len(fetched.symbols) - 1)
            present = fetched.symbols[at] == wanted
            mine = {name: stored[name][row] for name in PRICE_FIELDS}
            theirs = {
                name: np.where(present, fetched.values[name][at], np.nan) for name in PRICE_FIELDS
            }
            comparable = present & np.isfinite(mine["close"])
            changed.update(wanted[comparable & _differs(mine, theirs)])
        if previous is not None and len(previous):
            at = np.minimum(
                np.searchsorted(fetched.symbols, previous["key"]), len(fetched.symbols) - 1
            )
            present = fetched.symbols[at] == previous["key"]
            mine = {name: previous[name][present] for name in PRICE_FIELDS}
            theirs = {name: fetched.values[name][at[present]] for name in PRICE_FIELDS}
            others = previous["key"][present][_differs(mine, theirs)]
            changed.update(str(s) for s in others if str(s) not in self.column)
        return changed

    def _keep_symbol(
        self,
        symbol: str,
        bars: list[dict[str, Any]],
        stored: dict[str, np.ndarray],
        window: list[dt.date],
        start: dt.date,
        round_ns: int,
    ) -> None:
        fetched_ns = time.time_ns()
        timed = [b for b in bars if isinstance(b.get("t"), int | float)]
        days = [bar_date(int(b["t"])) for b in timed]
        inside = [start <= d <= self.end for d in days]
        timed = [b for b, keep in zip(timed, inside, strict=True) if keep]
        numbers = [day_number(d) for d, keep in zip(days, inside, strict=True) if keep]
        rows = {name: _column(timed, key) for name, key in _BAR_KEYS.items()}
        fetched = SymbolBars.build(symbol, numbers, rows)
        column = self.column[symbol]
        window_numbers = np.array([day_number(d) for d in window], dtype=np.int64)
        mine = {name: stored[name][:, column] for name in PRICE_FIELDS}
        theirs = {name: np.full(len(window), np.nan) for name in PRICE_FIELDS}
        if len(fetched.days):
            at = np.minimum(np.searchsorted(fetched.days, window_numbers), len(fetched.days) - 1)
            hit = fetched.days[at] == window_numbers
            for name in PRICE_FIELDS:
                theirs[name][hit] = fetched.values[name][at[hit]]
        overlap = np.isfinite(mine["close"]) & np.isfinite(theirs["close"])
        changed = bool((overlap & _differs(mine, theirs)).any())
        if changed:
            log.info(
                "polygon: adjusted bars of %s changed (a split); history fetched again", symbol
            )
        replace = changed or not overlap.any()
        self.changes.symbols.append(SymbolUpdate(fetched, (start, self.end), fetched_ns, replace))

    def _commit_now_and_then(self) -> None:
        due = time.monotonic() - self.committed_at >= COMMIT_INTERVAL_S
        if due or len(self.changes) >= COMMIT_EVERY:
            self._commit()

    def _commit(self) -> None:
        self.store.commit(self.changes)
        self.changes = Changes()
        self.committed_at = time.monotonic()

    def _assemble(self, view: StoreView) -> FetchResult:
        start = self._fetch_start(view)
        days = [
            start + dt.timedelta(days=n)
            for n in range((self.end - start).days + 1)
            if is_session(start + dt.timedelta(days=n), view.closed_days)
            and start + dt.timedelta(days=n) not in self.failed_days
        ]
        values, open_days = view.load(self.symbols, days)
        failed = np.isin(self.symbols, list(self.failed_symbols))
        for name in PRICE_FIELDS:
            values[name][:, failed] = np.nan
        keep = np.isfinite(values["close"]).any(axis=1) | open_days
        dates = np.array(days, dtype="datetime64[D]")[keep]
        block = PriceBlock(
            dates, self.symbols, **{name: values[name][keep] for name in PRICE_FIELDS}
        )
        failures = dict(self.failed_symbols)
        window = self._window(view)
        in_window = np.isin(
            np.array(days, dtype="datetime64[D]"), np.array(window, dtype="datetime64[D]")
        )
        has_bars = np.isfinite(values["close"][in_window]).any(axis=0)
        for symbol in self.symbols[~has_bars & ~failed]:
            failures[str(symbol)] = f"no bars from the provider between {window[0]} and {self.end}"
        for day, reason in self.failed_days.items():
            failures[day.isoformat()] = reason
        return FetchResult(block, failures, self.served_from_store)
