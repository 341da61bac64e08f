"""The two records every provider hands to the engine: a universe and a price block.

Price data is time-major (``[T, S]``: one row per date, one column per symbol) because every
indicator is a computation along time that is the same for every symbol; with the symbols
side by side, numpy does one operation per date for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRICE_FIELDS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class Universe:
    """Symbols with their descriptive columns, all the same length."""

    symbols: np.ndarray
    names: np.ndarray
    sectors: np.ndarray
    industries: np.ndarray

    def __len__(self) -> int:
        return len(self.symbols)

    def take(self, index: np.ndarray) -> Universe:
        return Universe(
            self.symbols[index], self.names[index], self.sectors[index], self.industries[index]
        )


@dataclass(frozen=True)
class PriceBlock:
    """Daily bars: ``dates[T]`` (datetime64[D]), ``symbols[S]``, each field float64 ``[T, S]``.

    NaN marks a value the source did not have; cleaning decides what that means.
    """

    dates: np.ndarray
    symbols: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.close.shape

    def field(self, name: str) -> np.ndarray:
        return getattr(self, name)
