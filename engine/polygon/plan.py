"""Which requests fetch what a scan lacks, in as few requests as possible.

What is missing is a set of cells (symbol, session). One grouped request fetches a whole
session (every US stock); one per-symbol request fetches a symbol's whole window (its bars
come in one page: at most 50,000). Covering every missing cell with the fewest requests is
a minimum vertex cover of a bipartite graph, and what is missing nearly always has one
shape: each symbol lacks a tail of the window (the days since it was last fetched) or all
of it. Those sets are nested, and then the best plan is always "the k symbols that lack the
most, per symbol; every day the others lack, grouped", for some k: ``plan_requests`` tries
every k (a pass over the symbols, sorted) and keeps the cheapest.

A grouped day counts as ``GROUPED_DAY_COST`` (0.95) of a request in that choice, because it
also brings every other stock's bar of the day, which later scans of other symbols then
need not fetch: a 500-symbol scan over 504 sessions goes per day (504 x 0.95 < 500), a
50-symbol one per symbol (50 < 479).

When grouped days are fetched for symbols the store already has bars of, one more grouped
request fetches again a day the store has (``check_day``, the latest one before the new
days): a split changes every adjusted bar before it, so a stored bar that differs from the
provider's is how a split is detected, and that symbol's history is then fetched again.
Per-symbol requests need no such day: they fetch the whole window, stored days included.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

GROUPED_DAY_COST = 0.95


@dataclass(frozen=True)
class Plan:
    """Requests to send: grouped days (``check_day`` among them, when there is one) and
    per-symbol windows."""

    days: tuple[dt.date, ...]
    symbols: tuple[str, ...]
    check_day: dt.date | None = None

    @property
    def requests(self) -> int:
        return len(self.days) + len(self.symbols)

    def describe(self) -> str:
        parts = []
        if self.days:
            checked = " (one to check for splits)" if self.check_day else ""
            parts.append(f"{len(self.days)} grouped days{checked}")
        if self.symbols:
            parts.append(f"{len(self.symbols)} symbols")
        return " and ".join(parts) or "nothing"


def plan_requests(known: np.ndarray, symbols: np.ndarray, sessions: list[dt.date]) -> Plan:
    """The cheapest plan for ``known`` (``[S, T]``: what the store has of each symbol on
    each session); symbols and sessions name its rows and columns."""
    missing = ~known
    lacking = np.flatnonzero(missing.any(axis=1))
    if len(lacking) == 0:
        return Plan((), ())
    counts = missing[lacking].sum(axis=1)
    order = lacking[np.argsort(-counts, kind="stable")]
    stored_any = bool(known.any())
    # union_sizes[k]: sessions that the symbols order[k:] lack, if they are fetched by day
    union = np.zeros(missing.shape[1], dtype=bool)
    union_sizes = np.zeros(len(order) + 1, dtype=np.int64)
    for k in range(len(order) - 1, -1, -1):
        union |= missing[order[k]]
        union_sizes[k] = union.sum()
    check = (union_sizes > 0) & stored_any
    costs = np.arange(len(order) + 1) + GROUPED_DAY_COST * (union_sizes + check)
    best = int(np.argmin(costs))
    by_symbol = order[:best]
    by_day = order[best:]
    day_mask = missing[by_day].any(axis=0) if len(by_day) else np.zeros(len(sessions), bool)
    days = [sessions[t] for t in np.flatnonzero(day_mask)]
    check_day = None
    if days and len(by_day):
        check_day = _check_day(known[by_day], day_mask, sessions)
    if check_day is not None:
        days.append(check_day)
    return Plan(tuple(sorted(days)), tuple(str(symbols[s]) for s in by_symbol), check_day=check_day)


def _check_day(known: np.ndarray, fetched: np.ndarray, sessions: list[dt.date]) -> dt.date | None:
    """The latest stored session before the first fetched one (else after the last)."""
    stored = known.any(axis=0) & ~fetched
    first = int(np.argmax(fetched))
    before = np.flatnonzero(stored[:first])
    if len(before):
        return sessions[int(before[-1])]
    after = np.flatnonzero(stored)
    return sessions[int(after[0])] if len(after) else None
