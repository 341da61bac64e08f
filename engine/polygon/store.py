"""The incremental bar store: daily bars fetched once, kept on disk by symbol and date.

Layout under the store's folder (one folder per API host: a stand-in's bars never mix with
the real ones)::

    index.json              what is known: per symbol, its file, the day ranges it covers
                            and since when its bars are valid; per grouped day, its file;
                            the days learned to be closed; a generation counter
    days/DATE@NS.npy        one grouped day: every US stock's bar of DATE, fetched at NS
    symbols/SYM@NS.npy      one symbol's history, fetched (or last merged) at NS

Why files and not PostgreSQL: ``technic scan`` runs without a database, the server and the
CLI share the data directory, and the engine stays free of SQL and of asyncio. Why .npy:
a day of the whole market or a symbol's history loads in a fraction of a millisecond,
with no parsing. Why an index: deciding what to fetch must not open thousands of files.

What a cell (symbol, day) is known from, newest knowledge first: the symbol's own file
when its ranges cover the day (a bar, or none: it did not trade), else the day's grouped
file when that was fetched after the symbol's ``valid_since`` (a symbol absent from a
grouped day did not trade), else nothing: the day must be fetched. ``valid_since`` moves
forward when a split is detected (a stored bar no longer matches the provider's), which
retires every older bar of that symbol at once without rewriting the day files.

Writers take an exclusive ``flock`` on ``lock`` to update the index (a second scan or a
``technic scan`` beside the server may write at the same time); a data file is written
under a new name and renamed into place before the index names it, and the index itself is
replaced atomically, so a reader without the lock sees one consistent version. A file the
index names but that is gone (removed by hand, or replaced a moment ago) counts as unknown
and is fetched again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from technic.engine.block import PRICE_FIELDS

log = logging.getLogger(__name__)

INDEX_VERSION = 1
_SAFE_SYMBOL = re.compile(r"[A-Za-z0-9._-]")
_EPOCH = dt.date(1970, 1, 1)


def day_number(day: dt.date) -> int:
    return (day - _EPOCH).days


def day_of(number: int) -> dt.date:
    return _EPOCH + dt.timedelta(days=int(number))


def _file_symbol(symbol: str) -> str:
    """A symbol as a file name: anything but letters, digits, '.', '_', '-' as %XX."""
    return "".join(c if _SAFE_SYMBOL.fullmatch(c) else f"%{ord(c):02X}" for c in symbol)


@dataclass(frozen=True)
class DayBars:
    """Bars of many symbols on one day (a grouped answer), sorted by symbol."""

    day: dt.date
    symbols: np.ndarray  # str
    values: dict[str, np.ndarray]  # PRICE_FIELDS -> float64 [n]

    @classmethod
    def build(cls, day: dt.date, symbols: list[str], rows: dict[str, Any]) -> DayBars:
        names = np.array(symbols, dtype=str) if symbols else np.array([], dtype="U1")
        order = np.argsort(names, kind="stable")
        values = {k: np.asarray(rows[k], dtype=np.float64)[order] for k in PRICE_FIELDS}
        return cls(day, names[order], values)


@dataclass(frozen=True)
class SymbolBars:
    """One symbol's bars, by day number, sorted."""

    symbol: str
    days: np.ndarray  # int64 day numbers
    values: dict[str, np.ndarray]

    @classmethod
    def build(cls, symbol: str, days: list[int], rows: dict[str, Any]) -> SymbolBars:
        numbers = np.asarray(days, dtype=np.int64)
        order = np.argsort(numbers, kind="stable")
        values = {k: np.asarray(rows[k], dtype=np.float64)[order] for k in PRICE_FIELDS}
        return cls(symbol, numbers[order], values)


def _structured(keys: np.ndarray, key_dtype: Any, values: dict[str, np.ndarray]) -> np.ndarray:
    dtype = [("key", key_dtype), *((name, "<f8") for name in PRICE_FIELDS)]
    out = np.empty(len(keys), dtype=dtype)
    out["key"] = keys
    for name in PRICE_FIELDS:
        out[name] = values[name]
    return out


@dataclass
class _SymbolEntry:
    file: str | None
    ranges: list[tuple[int, int]]  # inclusive day-number ranges this symbol's file covers
    valid_since_ns: int

    def covers(self, number: int) -> bool:
        return any(low <= number <= high for low, high in self.ranges)


def _merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


@dataclass
class StoreView:
    """One consistent reading of the index, and the bars it names."""

    root: Path
    generation: int = 0
    symbols: dict[str, _SymbolEntry] = field(default_factory=dict)
    days: dict[int, tuple[str, int]] = field(default_factory=dict)  # number -> (file, ns)
    closed: set[int] = field(default_factory=set)

    @property
    def closed_days(self) -> set[dt.date]:
        return {day_of(n) for n in self.closed}

    def coverage(self, symbols: np.ndarray, days: list[dt.date]) -> np.ndarray:
        """``[S, T]``: whether the store knows each symbol's bar (or its absence) that day."""
        numbers = np.array([day_number(d) for d in days], dtype=np.int64)
        grouped_ns = np.array([self.days.get(int(n), ("", -1))[1] for n in numbers], np.int64)
        valid_since = self._valid_since(symbols)
        known = (grouped_ns[None, :] >= 0) & (grouped_ns[None, :] >= valid_since[:, None])
        known |= np.isin(numbers, list(self.closed))[None, :]
        known |= self._symbol_file_covers(symbols, numbers)
        return known

    def load(
        self, symbols: np.ndarray, days: list[dt.date]
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Stored bars ``{field: [T, S]}`` (NaN where none) and ``[T]`` whether a grouped
        file says the market was open that day."""
        numbers = np.array([day_number(d) for d in days], dtype=np.int64)
        out = {name: np.full((len(days), len(symbols)), np.nan) for name in PRICE_FIELDS}
        from_symbol_file = self._symbol_file_covers(symbols, numbers).T
        for s, symbol in enumerate(symbols):
            bars = self.symbol_bars(str(symbol))
            if bars is None or not len(bars):
                continue
            rows = np.minimum(np.searchsorted(bars["key"], numbers), len(bars) - 1)
            hit = from_symbol_file[:, s] & (bars["key"][rows] == numbers)
            for name in PRICE_FIELDS:
                out[name][hit, s] = bars[name][rows[hit]]
        open_days = np.zeros(len(days), dtype=bool)
        wanted = np.asarray(symbols, dtype=str)
        valid_since = self._valid_since(symbols)
        for t, number in enumerate(numbers):
            stored = self.days.get(int(number))
            bars = _read(self.root / "days", stored[0]) if stored else None
            if bars is None or not len(bars):
                continue
            open_days[t] = True
            rows = np.minimum(np.searchsorted(bars["key"], wanted), len(bars) - 1)
            hit = (bars["key"][rows] == wanted) & (valid_since <= stored[1])
            hit &= ~from_symbol_file[t]
            for name in PRICE_FIELDS:
                out[name][t, hit] = bars[name][rows[hit]]
        return out, open_days

    def _valid_since(self, symbols: np.ndarray) -> np.ndarray:
        entries = [self.symbols.get(str(s)) for s in symbols]
        return np.array([e.valid_since_ns if e else 0 for e in entries], dtype=np.int64)

    def _symbol_file_covers(self, symbols: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        covers = np.zeros((len(symbols), len(numbers)), dtype=bool)
        for s, symbol in enumerate(symbols):
            entry = self.symbols.get(str(symbol))
            if entry is None:
                continue
            for low, high in entry.ranges:
                covers[s] |= (numbers >= low) & (numbers <= high)
        return covers

    def day_bars(self, day: dt.date) -> np.ndarray | None:
        """The stored grouped file of ``day`` as a structured array, if there is one."""
        stored = self.days.get(day_number(day))
        return _read(self.root / "days", stored[0]) if stored else None

    def symbol_bars(self, symbol: str) -> np.ndarray | None:
        entry = self.symbols.get(symbol)
        if entry is None or entry.file is None:
            return None
        return _read(self.root / "symbols", entry.file)


def _read(folder: Path, name: str) -> np.ndarray | None:
    try:
        return np.load(folder / name, allow_pickle=False)
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class SymbolUpdate:
    bars: SymbolBars
    covered: tuple[dt.date, dt.date]
    fetched_ns: int
    replace: bool


@dataclass
class Changes:
    """What a fetch learned, kept until it is committed in one go."""

    days: list[tuple[DayBars, int]] = field(default_factory=list)
    symbols: list[SymbolUpdate] = field(default_factory=list)
    closed: list[dt.date] = field(default_factory=list)
    invalidated: list[tuple[str, int]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.days or self.symbols or self.closed or self.invalidated)

    def __len__(self) -> int:
        return len(self.days) + len(self.symbols) + len(self.closed) + len(self.invalidated)


class BarStore:
    """The store in ``root``; see the module docstring for what it keeps and why."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def view(self) -> StoreView:
        path = self.root / "index.json"
        try:
            raw = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return StoreView(self.root)
        if raw.get("version") != INDEX_VERSION:
            log.warning(
                "bar store %s has index version %s; starting afresh", self.root, raw.get("version")
            )
            return StoreView(self.root)
        return StoreView(
            self.root,
            generation=int(raw["generation"]),
            symbols={
                symbol: _SymbolEntry(
                    entry["file"], [tuple(r) for r in entry["ranges"]], int(entry["valid_since_ns"])
                )
                for symbol, entry in raw["symbols"].items()
            },
            days={int(n): (f, int(ns)) for n, (f, ns) in raw["days"].items()},
            closed={int(n) for n in raw["closed"]},
        )

    # -- writing -----------------------------------------------------------------------

    def commit(self, changes: Changes) -> None:
        """Write a batch of fetched bars and what was learned, in one index update.

        Symbols whose bars no longer match are retired first (``invalidated``), so bars of
        them fetched in the same batch are kept on their own. A symbol's new bars are
        merged with its stored ones unless its entry says ``replace`` (then every bar of it
        fetched before is dropped, as after a split).
        """
        if changes.empty:
            return
        written_days = [(bars.day, self._write_day(bars, ns), ns) for bars, ns in changes.days]
        stale: list[Path] = []
        with self._index() as index:
            for symbol, since_ns in changes.invalidated:
                entry = index["symbols"].get(symbol)
                if entry and entry["file"]:
                    stale.append(Path("symbols") / entry["file"])
                index["symbols"][symbol] = {"file": None, "ranges": [], "valid_since_ns": since_ns}
            if changes.invalidated:
                index["generation"] += 1
            index["closed"] = sorted(set(index["closed"]) | {day_number(d) for d in changes.closed})
            for day, name, fetched_ns in written_days:
                number = str(day_number(day))
                previous = index["days"].get(number)
                if previous is not None and previous[1] > fetched_ns:
                    stale.append(Path("days") / name)
                    continue
                index["days"][number] = [name, fetched_ns]
                if previous is not None:
                    stale.append(Path("days") / previous[0])
            for update in changes.symbols:
                stale.extend(self._put_symbol(index, update))
        for relative in stale:
            with contextlib.suppress(FileNotFoundError):
                (self.root / relative).unlink()

    def _write_day(self, bars: DayBars, fetched_ns: int) -> str:
        name = f"{bars.day.isoformat()}@{fetched_ns}.npy"
        width = max((len(s) for s in bars.symbols), default=1)
        self._write(self.root / "days" / name, _structured(bars.symbols, f"U{width}", bars.values))
        return name

    def _put_symbol(self, index: dict[str, Any], update: SymbolUpdate) -> list[Path]:
        bars = update.bars
        low, high = day_number(update.covered[0]), day_number(update.covered[1])
        entry = index["symbols"].get(bars.symbol)
        previous = entry["file"] if entry else None
        days, values = bars.days, bars.values
        ranges = [(low, high)]
        if update.replace or entry is None:
            valid_since = update.fetched_ns if update.replace else 0
        else:
            valid_since = entry["valid_since_ns"]
            ranges += [tuple(r) for r in entry["ranges"]]
            stored = _read(self.root / "symbols", previous) if previous else None
            if stored is not None:
                keep = (stored["key"] < low) | (stored["key"] > high)
                days = np.concatenate([stored["key"][keep].astype(np.int64), days])
                order = np.argsort(days, kind="stable")
                days = days[order]
                values = {
                    k: np.concatenate([stored[k][keep], values[k]])[order] for k in PRICE_FIELDS
                }
        name = f"{_file_symbol(bars.symbol)}@{update.fetched_ns}.npy"
        self._write(self.root / "symbols" / name, _structured(days, "<i8", values))
        index["symbols"][bars.symbol] = {
            "file": name,
            "ranges": [list(r) for r in _merge_ranges(ranges)],
            "valid_since_ns": valid_since,
        }
        if update.replace and previous:
            index["generation"] += 1
        return [Path("symbols") / previous] if previous and previous != name else []

    # -- internals ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _index(self) -> Iterator[dict[str, Any]]:
        """The index, read and written back under the store's lock."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                path = self.root / "index.json"
                try:
                    index = orjson.loads(path.read_bytes())
                except FileNotFoundError:
                    index = None
                if not index or index.get("version") != INDEX_VERSION:
                    index = {
                        "version": INDEX_VERSION,
                        "generation": 0,
                        "symbols": {},
                        "days": {},
                        "closed": [],
                    }
                yield index
                self._replace(path, orjson.dumps(index))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, path: Path, array: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=".", suffix=".npy", delete=False
        ) as handle:
            np.save(handle, array, allow_pickle=False)
        os.replace(handle.name, path)

    def _replace(self, path: Path, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".", delete=False) as handle:
            handle.write(data)
        os.replace(handle.name, path)
