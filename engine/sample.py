"""The bundled real sample: 504 S&P 500 stocks, daily bars 2012-08-13 .. 2017-08-11.

The universe has 504 rows; the price block has 503 symbols and 1,258 dates, because one
listed symbol (AMT) has no bars in the source. A scan reports it as a failure.

See ``engine/data/convert_sample.py`` for why it is stored as delta-encoded integer cents.
Decoding takes about half a second, so the result is kept per process.
"""

from __future__ import annotations

import functools
import io
import lzma
from pathlib import Path

import numpy as np
from technic.engine.block import PRICE_FIELDS, PriceBlock, Universe
from technic.engine.universe import read_universe_file

SAMPLE_PATH = Path(__file__).parent / "data" / "sp500.npz.xz"
UNIVERSE_PATH = Path(__file__).parent / "data" / "sp500_constituents.csv"
_MISSING = -1


@functools.cache
def _archive() -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(lzma.decompress(SAMPLE_PATH.read_bytes()))) as archive:
        return {key: archive[key] for key in archive.files}


def sample_bar_count() -> int:
    """Dates in the sample (1,258), without building the float block."""
    return len(_archive()["dates"])


def load_sample_universe() -> Universe:
    return read_universe_file(UNIVERSE_PATH)


@functools.cache
def load_sample_block() -> PriceBlock:
    """The whole sample as one time-major float64 block, NaN where the source was empty."""
    archive = _archive()
    fields: dict[str, np.ndarray] = {}
    for name in PRICE_FIELDS:
        encoded = np.cumsum(archive[name].astype(np.int64), axis=1).T
        values = encoded.astype(np.float64)
        if name != "volume":
            values /= 100.0
        values[encoded == _MISSING] = np.nan
        values.flags.writeable = False
        fields[name] = values
    return PriceBlock(dates=archive["dates"], symbols=archive["symbols"].astype(object), **fields)
