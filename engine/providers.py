"""Price providers: the narrow seam through which the engine gets its data.

Each provider answers three questions: which symbols exist (``universe``), what exactly
this dataset is (``identity``, the cache key: the same identity must always mean the same
bars), and the bars of some symbols (``fetch``, returning per-symbol failures instead of
raising). Nothing else in the engine knows where data comes from.

A provider reports its work through the ``StageProgress`` it is given: by default a unit
is a symbol and the stage's total is the number of symbols; a provider whose work is
something else (``polygon``: HTTP requests) states its units with ``plan``, and, when it
knows what a unit costs in advance (a rate limit), the seconds per unit, so that the
stage's ETA is right before the first unit is done. ``check_cancel`` raises
``ScanCancelled`` once the scan is cancelled; a provider that waits calls it at least
every tenth of a second.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd
from technic.engine import sample
from technic.engine.block import PRICE_FIELDS, PriceBlock, Universe
from technic.engine.errors import DataError, ScanCancelled
from technic.engine.scan_config import ScanConfig, check_scan_cells
from technic.engine.universe import read_universe_file, synthetic_universe

if TYPE_CHECKING:
    from technic.engine.polygon.source import PolygonSource

FETCH_BATCH = 256
SYNTHETIC_CHUNK = 1000
SYNTHETIC_END = dt.date(2024, 12, 31)


@dataclass
class FetchResult:
    """The fetched block, and what a provider with a store of its own (``polygon``'s bar
    store) did not have to fetch: ``served_from_store`` is that share of the requested
    data, in the provider's own unit (0 for a provider that keeps nothing between scans,
    None when there was nothing to fetch). It is the scan's cache hit ratio on a miss of
    the block cache."""

    block: PriceBlock
    failures: dict[str, str] = field(default_factory=dict)
    served_from_store: float | None = 0.0


@dataclass(frozen=True)
class StageProgress:
    """What a provider tells the scan while it works: units planned, units done, and
    whether to stop. Without callbacks (``QUIET``) it records nothing and never cancels."""

    on_plan: Callable[[int, str, float | None, str], None] | None = None
    on_advance: Callable[[int], None] | None = None
    cancelled: Callable[[], bool] | None = None

    def plan(
        self, units: int, *, unit: str, seconds_per_unit: float | None = None, detail: str = ""
    ) -> None:
        """The stage has ``units`` of ``unit`` in all (said again when the total grows)."""
        if self.on_plan is not None:
            self.on_plan(units, unit, seconds_per_unit, detail)

    def advance(self, units: int = 1) -> None:
        self.check_cancel()
        if self.on_advance is not None:
            self.on_advance(units)

    def check_cancel(self) -> None:
        if self.cancelled is not None and self.cancelled():
            raise ScanCancelled


QUIET = StageProgress()


class Provider(Protocol):
    def universe(self, progress: StageProgress = QUIET) -> Universe: ...

    def identity(self) -> str: ...

    def bar_count(self) -> int | None:
        """Rows of the block ``fetch`` will build, if known before reading any data."""
        ...

    def fetch(self, symbols: np.ndarray, progress: StageProgress) -> FetchResult: ...


def _gather(source: PriceBlock, symbols: np.ndarray, progress: StageProgress) -> FetchResult:
    """Columns of ``source`` for ``symbols``, all-NaN where the source has none."""
    position = {symbol: i for i, symbol in enumerate(source.symbols)}
    columns = np.array([position.get(s, -1) for s in symbols], dtype=np.int64)
    out = {name: np.full((len(source.dates), len(symbols)), np.nan) for name in PRICE_FIELDS}
    for start in range(0, len(symbols), FETCH_BATCH):
        part = columns[start : start + FETCH_BATCH]
        present = part >= 0
        for name in PRICE_FIELDS:
            target = out[name][:, start : start + FETCH_BATCH]
            target[:, present] = source.field(name)[:, part[present]]
        progress.advance(len(part))
    failures = {s: "no price data" for s, c in zip(symbols, columns, strict=True) if c < 0}
    return FetchResult(PriceBlock(source.dates, np.asarray(symbols, dtype=object), **out), failures)


class SampleProvider:
    """The bundled real S&P 500 sample."""

    def universe(self, progress: StageProgress = QUIET) -> Universe:
        return sample.load_sample_universe()

    def identity(self) -> str:
        stat = sample.SAMPLE_PATH.stat()
        return f"sample:{stat.st_size}:{stat.st_mtime_ns}"

    def bar_count(self) -> int:
        return sample.sample_bar_count()

    def fetch(self, symbols: np.ndarray, progress: StageProgress) -> FetchResult:
        return _gather(sample.load_sample_block(), symbols, progress)


@dataclass(frozen=True)
class SyntheticProvider:
    """Deterministic random-walk bars: the same seed, size and end date give the same bars.

    Symbols are generated in fixed chunks of 1,000, each from its own seed sequence, so a
    symbol's bars do not depend on which other symbols a scan asks for.
    """

    count: int
    bars: int
    seed: int
    end: dt.date = SYNTHETIC_END

    def universe(self, progress: StageProgress = QUIET) -> Universe:
        return synthetic_universe(self.count)

    def identity(self) -> str:
        return f"synthetic:v1:{self.count}:{self.bars}:{self.seed}:{self.end}"

    def bar_count(self) -> int:
        return self.bars

    def dates(self) -> np.ndarray:
        end = np.busday_offset(np.datetime64(self.end, "D"), 0, roll="backward")
        return np.busday_offset(end, np.arange(-self.bars + 1, 1), roll="backward")

    def fetch(self, symbols: np.ndarray, progress: StageProgress) -> FetchResult:
        numbers = np.array([int(s[3:]) - 1 for s in symbols], dtype=np.int64)
        out = {name: np.empty((self.bars, len(symbols))) for name in PRICE_FIELDS}
        for chunk in np.unique(numbers // SYNTHETIC_CHUNK):
            generated = self._chunk(int(chunk))
            wanted = np.flatnonzero(numbers // SYNTHETIC_CHUNK == chunk)
            local = numbers[wanted] - chunk * SYNTHETIC_CHUNK
            for name in PRICE_FIELDS:
                out[name][:, wanted] = generated[name][:, local]
            progress.advance(len(wanted))
        return FetchResult(PriceBlock(self.dates(), np.asarray(symbols, dtype=object), **out))

    def _chunk(self, chunk: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, chunk]))
        size = min(SYNTHETIC_CHUNK, self.count - chunk * SYNTHETIC_CHUNK)
        shape = (self.bars, size)
        drift = rng.normal(0.0003, 0.0012, size)
        volatility = rng.uniform(0.008, 0.03, size)
        log_returns = drift + volatility * rng.standard_normal(shape)
        close = rng.uniform(5.0, 300.0, size) * np.exp(np.cumsum(log_returns, axis=0))
        previous = np.vstack([close[:1] * np.exp(-log_returns[:1]), close[:-1]])
        open_ = previous * np.exp(0.3 * volatility * rng.standard_normal(shape))
        wick = 0.5 * volatility * np.abs(rng.standard_normal((2, *shape)))
        high = np.maximum(open_, close) * np.exp(wick[0])
        low = np.minimum(open_, close) * np.exp(-wick[1])
        base_volume = np.exp(rng.uniform(np.log(2e5), np.log(2e7), size))
        volume = np.round(base_volume * np.exp(0.35 * rng.standard_normal(shape)))
        return {"open": open_, "high": high, "low": low, "close": close, "volume": volume}


_CSV_COLUMNS = {
    "date": ("date", "timestamp", "time", "day"),
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "volume": ("volume", "vol"),
    "adj_close": ("adj close", "adj_close", "adjclose", "adjusted close", "adjusted_close"),
}


@dataclass(frozen=True)
class CsvProvider:
    """A directory of per-symbol CSV files named ``SYMBOL.csv`` (or ``.csv.gz``).

    Columns are matched case-insensitively (Date/date, Open/open, ...). ``Adj Close`` is
    ignored unless ``adjusted`` is set; then open/high/low/close are scaled by
    adj_close / close so that splits and dividends do not look like crashes.

    The dates (the rows of the block: every date any file has) are known only once the
    files are read, so ``max_cells`` is checked then, before the block is built.
    """

    directory: Path
    universe_file: Path | None = None
    adjusted: bool = False
    max_cells: int | None = None

    def _files(self) -> dict[str, Path]:
        if not self.directory.is_dir():
            raise DataError(f"data directory not found: {self.directory}")
        files: dict[str, Path] = {}
        for path in sorted(self.directory.iterdir()):
            name = path.name
            for suffix in (".csv.gz", ".csv"):
                if name.lower().endswith(suffix):
                    files[name[: -len(suffix)].upper()] = path
        return files

    def universe(self, progress: StageProgress = QUIET) -> Universe:
        if self.universe_file is not None:
            return read_universe_file(self.universe_file)
        symbols = np.array(sorted(self._files()), dtype=object)
        if len(symbols) == 0:
            raise DataError(f"no CSV files in {self.directory}")
        blank = np.full(len(symbols), "", dtype=object)
        return Universe(symbols, blank.copy(), blank.copy(), blank.copy())

    def identity(self) -> str:
        digest = hashlib.sha256(str(self.directory.resolve()).encode())
        digest.update(b"adjusted" if self.adjusted else b"raw")
        for symbol, path in self._files().items():
            stat = path.stat()
            digest.update(f"{symbol}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return f"csv:{digest.hexdigest()}"

    def bar_count(self) -> None:
        return None

    def fetch(self, symbols: np.ndarray, progress: StageProgress) -> FetchResult:
        files = self._files()
        frames: dict[str, pd.DataFrame] = {}
        failures: dict[str, str] = {}
        for symbol in symbols:
            path = files.get(symbol)
            if path is None:
                failures[symbol] = "no price data"
            else:
                try:
                    frames[symbol] = self._read(path)
                except DataError as error:
                    failures[symbol] = str(error)
            progress.advance(1)
        dates = np.unique(np.concatenate([f.index.to_numpy() for f in frames.values()] or [[]]))
        dates = dates.astype("datetime64[D]")
        check_scan_cells(len(symbols), len(dates), self.max_cells)
        out = {name: np.full((len(dates), len(symbols)), np.nan) for name in PRICE_FIELDS}
        for column, symbol in enumerate(symbols):
            frame = frames.get(symbol)
            if frame is None:
                continue
            rows = np.searchsorted(dates, frame.index.to_numpy().astype("datetime64[D]"))
            for name in PRICE_FIELDS:
                out[name][rows, column] = frame[name].to_numpy()
        block = PriceBlock(dates, np.asarray(symbols, dtype=object), **out)
        return FetchResult(block, failures)

    def _read(self, path: Path) -> pd.DataFrame:
        try:
            raw = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError) as error:
            raise DataError(f"unreadable file {path.name}: {error}") from error
        lowered = {c.strip().lower(): c for c in raw.columns}
        picked: dict[str, str] = {}
        for target, aliases in _CSV_COLUMNS.items():
            column = next((lowered[a] for a in aliases if a in lowered), None)
            if column is not None:
                picked[target] = column
        missing = [c for c in ("date", "close") if c not in picked]
        if missing:
            raise DataError(f"{path.name} has no {' or '.join(missing)} column")
        dates = pd.to_datetime(raw[picked["date"]], errors="coerce", format="mixed")
        frame = pd.DataFrame(index=dates.dt.normalize())
        for name in (*PRICE_FIELDS, "adj_close"):
            column = picked.get(name)
            values = raw[column] if column else pd.Series([""] * len(raw))
            frame[name] = pd.to_numeric(values.to_numpy(), errors="coerce")
        frame = frame[frame.index.notna()]
        frame = frame[~frame.index.duplicated(keep="last")].sort_index()
        if frame.empty:
            raise DataError(f"{path.name} has no rows with a valid date")
        if self.adjusted and "adj_close" in picked:
            factor = frame["adj_close"] / frame["close"]
            for name in ("open", "high", "low", "close"):
                frame[name] = frame[name] * factor
        return frame


def provider_for(
    config: ScanConfig,
    *,
    max_scan_cells: int | None = None,
    polygon: PolygonSource | None = None,
) -> Provider:
    """The provider of ``config``; ``max_scan_cells`` reaches the one that can only check
    it while fetching (csv); ``polygon`` is what the polygon provider needs from outside
    (key, host, rate, bar store), built once per process by the server or the CLI."""
    if config.provider == "polygon":
        from technic.engine.polygon.provider import PolygonProvider

        return PolygonProvider(config, polygon)
    if config.provider == "synthetic":
        end = config.as_of or SYNTHETIC_END
        return SyntheticProvider(config.max_symbols, config.bars, config.seed, end)
    if config.provider == "csv":
        universe_file = Path(config.universe_file) if config.universe_file else None
        return CsvProvider(
            Path(str(config.data_dir)), universe_file, config.adjusted, max_scan_cells
        )
    if config.universe_file:
        return _UniverseFileOverSample(Path(config.universe_file))
    return SampleProvider()


@dataclass(frozen=True)
class _UniverseFileOverSample(SampleProvider):
    """The sample's bars for the symbols a universe file lists (others fail: no data)."""

    universe_file: Path

    def universe(self, progress: StageProgress = QUIET) -> Universe:
        return read_universe_file(self.universe_file)
