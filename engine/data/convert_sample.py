"""Build ``engine/data/sp500.npz.xz`` from the shared CSV (run once; the output is committed).

Why this format: every price in the source has at most two decimals, so prices are stored
exactly as integer cents; each symbol's series is delta-encoded along time and the whole
archive is xz-compressed. That keeps 606,801 rows at about 5 MB in the repository and loads
in half a second. -1 marks a missing value (no real price or volume is negative).

The universe (``constituents.csv``) is copied as is to ``sp500_constituents.csv``: it is
small, and reading it must not wait for the bars to be decoded.

Usage: ``python -m engine.data.convert_sample ../shared/data/sp500-2012-2017``
"""

from __future__ import annotations

import io
import lzma
import sys
from pathlib import Path

import numpy as np
import pandas as pd

MISSING = -1
FIELDS = ("open", "high", "low", "close", "volume")


def convert(source_dir: Path, target: Path) -> None:
    bars = pd.read_csv(source_dir / "daily_ohlcv.csv.gz")
    dates = np.sort(bars["date"].unique())
    symbols = np.sort(bars["symbol"].unique())
    date_index = np.searchsorted(dates, bars["date"].to_numpy())
    symbol_index = np.searchsorted(symbols, bars["symbol"].to_numpy())
    arrays: dict[str, np.ndarray] = {}
    for field in FIELDS:
        values = bars[field].to_numpy(dtype=np.float64)
        scale = 1.0 if field == "volume" else 100.0
        encoded = np.where(np.isnan(values), MISSING, np.round(values * scale)).astype(np.int64)
        block = np.full((len(dates), len(symbols)), MISSING, dtype=np.int64)
        block[date_index, symbol_index] = encoded
        if block.max() >= 2**31:
            raise ValueError(f"{field} does not fit int32")
        arrays[field] = np.diff(block.T, axis=1, prepend=0).astype(np.int32)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        dates=dates.astype("datetime64[D]"),
        symbols=symbols.astype(str),
        **arrays,
    )
    target.write_bytes(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(__file__).with_name("sp500.npz.xz"))
