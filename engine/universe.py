"""Where the list of symbols comes from, and how a scan narrows it.

Three sources: the bundled S&P 500 sample, a CSV universe file (the original's layout:
symbol, Name, Sector, Industry, ...; columns matched case-insensitively, ``ticker``
accepted for ``symbol``), and a synthetic universe of any size spread evenly over the 11
GICS sectors. Filters match sector and industry names case-insensitively but an unknown
name is an error that lists the valid ones: a typo must not silently scan nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from technic.engine.block import Universe
from technic.engine.errors import DataError, InvalidConfig

GICS_SECTORS: tuple[str, ...] = (
    "Communication Services",
    "Consumer Discretionary",
    "Consumer Staples",
    "Energy",
    "Financials",
    "Health Care",
    "Industrials",
    "Information Technology",
    "Materials",
    "Real Estate",
    "Utilities",
)

_COLUMN_ALIASES = {
    "symbol": ("symbol", "ticker"),
    "name": ("name", "company", "security"),
    "sector": ("sector", "gics sector"),
    "industry": ("industry", "sub_industry", "subindustry", "gics sub-industry"),
}


def synthetic_universe(count: int) -> Universe:
    """``count`` symbols named SYN00001.., sectors round-robin, three industries each."""
    index = np.arange(count)
    width = max(5, len(str(count)))
    symbols = np.array([f"SYN{i + 1:0{width}d}" for i in index], dtype=object)
    sectors = np.array(GICS_SECTORS, dtype=object)[index % len(GICS_SECTORS)]
    groups = (index // len(GICS_SECTORS)) % 3 + 1
    industries = np.array([f"{s} {g}" for s, g in zip(sectors, groups, strict=True)], dtype=object)
    names = np.array([f"Synthetic Co {i + 1}" for i in index], dtype=object)
    return Universe(symbols, names, sectors, industries)


def read_universe_file(path: str | Path) -> Universe:
    """Read a universe CSV; missing name/sector/industry columns become empty strings."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"universe file not found: {path}") from None
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise DataError(f"universe file {path} cannot be read: {error}") from error
    lowered = {column.strip().lower(): column for column in frame.columns}
    picked: dict[str, np.ndarray] = {}
    for target, aliases in _COLUMN_ALIASES.items():
        column = next((lowered[a] for a in aliases if a in lowered), None)
        if column is None and target == "symbol":
            raise DataError(f"universe file {path} has no symbol or ticker column")
        values = frame[column].str.strip() if column is not None else pd.Series([""] * len(frame))
        picked[target] = values.to_numpy(dtype=object)
    symbols = np.array([s.upper() for s in picked["symbol"]], dtype=object)
    keep = symbols != ""
    _, first = np.unique(symbols[keep], return_index=True)
    rows = np.flatnonzero(keep)[np.sort(first)]
    if len(rows) == 0:
        raise DataError(f"universe file {path} lists no symbols")
    return Universe(
        symbols[rows], picked["name"][rows], picked["sector"][rows], picked["industry"][rows]
    )


def _match(field: str, wanted: tuple[str, ...], available: np.ndarray) -> np.ndarray:
    valid = sorted({v for v in available if v})
    by_lower = {v.lower(): v for v in valid}
    unknown = [w for w in wanted if w.lower() not in by_lower]
    if unknown:
        raise InvalidConfig(
            field, f"unknown {field} {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}"
        )
    chosen = {by_lower[w.lower()] for w in wanted}
    return np.isin(available, list(chosen))


def select(
    universe: Universe,
    *,
    sectors: tuple[str, ...] | None,
    industries: tuple[str, ...] | None,
    symbols: tuple[str, ...] | None,
    max_symbols: int,
) -> tuple[Universe, list[str]]:
    """Apply the filters in universe order; return the selection and unknown symbols."""
    mask = np.ones(len(universe), dtype=bool)
    if sectors:
        mask &= _match("sectors", sectors, universe.sectors)
    if industries:
        mask &= _match("industries", industries, universe.industries)
    missing: list[str] = []
    if symbols:
        known = set(universe.symbols)
        missing = [s for s in symbols if s not in known]
        mask &= np.isin(universe.symbols, list(symbols))
    index = np.flatnonzero(mask)[:max_symbols]
    return universe.take(index), missing
