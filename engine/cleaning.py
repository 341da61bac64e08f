"""The missing-data policy: what the engine does with real, messy bars.

Applied per symbol over the scan's window, all symbols at once:

* A price that is not a finite positive number is treated as missing; so is a NaN or
  negative volume, which then counts as zero (nobody traded that we know of).
* A *partial row* (close present, open/high/low missing; the sample has 384, most on
  2017-07-31) is completed, not dropped: open = the previous close (the price the
  session opened from), high = the largest and low = the smallest of the prices present.
  Dropping it would cut every later bar off from the history before it.
* An *inconsistent row* (high below low, or open or close outside [low, high]; the sample
  has 42, e.g. HLT around its reverse split) is widened minimally: high and low become
  the largest and smallest of the four prices. The true range may still be wrong, but it
  can no longer be negative, which would poison ATR and ADX.
* A *gap* (no close between two real bars) becomes a flat bar at the previous close with
  zero volume: the market was there, the stock did not trade.
* Bars before a symbol's first close are *not listed yet*: its history starts there.
  A symbol whose last close is more than ``max_stale_bars`` sessions before the window's
  end is a failure ("stale"); one that stops a few sessions early is rated as of its
  own last bar (the row's ``as_of`` says so).
* Fewer than ``min_bars`` bars of history is a failure naming the count.

Complete, consistent rows are never altered, so on complete data the indicators equal TA-Lib's on
the raw bars. The result is *left-aligned*: each symbol's history starts at row 0, which
lets every recursive indicator seed all symbols on the same row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRICE_NAMES = ("open", "high", "low", "close", "volume")


@dataclass
class CleanBlock:
    """Left-aligned bars of the symbols that can be rated.

    ``columns`` are indexes into the input's columns; ``lengths`` the bars each has;
    ``last_row`` the input row of each one's last real bar. ``failures`` maps an input
    column to the reason it cannot be rated.
    """

    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    columns: np.ndarray
    lengths: np.ndarray
    last_row: np.ndarray
    failures: dict[int, str]
    partial_rows: int
    inconsistent_rows: int
    gap_rows: int


def _positive(values: np.ndarray) -> np.ndarray:
    values = np.array(values, dtype=np.float64)
    values[~(values > 0)] = np.nan
    return values


def _tidy_columns(
    open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray
) -> np.ndarray:
    """Columns that need no repair at all: every bar present, positive and consistent."""
    with np.errstate(invalid="ignore"):
        body_top = np.maximum(open_, close)
        body_bottom = np.minimum(open_, close)
        return (
            (low > 0).all(axis=0)
            & (high >= body_top).all(axis=0)
            & (low <= body_bottom).all(axis=0)
            & (volume >= 0).all(axis=0)
            & np.isfinite(body_top).all(axis=0)
            & np.isfinite(body_bottom).all(axis=0)
        )


def clean(
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    *,
    min_bars: int = 20,
    max_stale_bars: int = 5,
) -> CleanBlock:
    """Apply the policy above to ``[W, S]`` arrays (the scan window of S symbols).

    Most columns of real data and all of synthetic data are tidy; they are passed through
    untouched (no copy), and only the others take the repairing path.
    """
    rows, width = close.shape
    tidy = _tidy_columns(open_, high, low, close, volume) & (rows >= min_bars)
    fields = (open_, high, low, close, volume)
    if tidy.all():
        return CleanBlock(
            *fields,
            columns=np.arange(width),
            lengths=np.full(width, rows),
            last_row=np.full(width, rows - 1),
            failures={},
            partial_rows=0,
            inconsistent_rows=0,
            gap_rows=0,
        )
    dirty = np.flatnonzero(~tidy)
    repaired = _repair(
        *(f[:, dirty] for f in fields), min_bars=min_bars, max_stale_bars=max_stale_bars
    )
    tidy_columns = np.flatnonzero(tidy)
    columns = np.concatenate([tidy_columns, dirty[repaired.columns]])
    order = np.argsort(columns, kind="stable")
    depth = rows if len(tidy_columns) else repaired.close.shape[0]

    def merge(original: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        merged = np.full((depth, len(columns)), np.nan)
        merged[:, : len(tidy_columns)] = original[:depth, tidy_columns]
        merged[: fixed.shape[0], len(tidy_columns) :] = fixed
        return merged[:, order]

    lengths = np.concatenate([np.full(len(tidy_columns), rows), repaired.lengths])
    last_row = np.concatenate([np.full(len(tidy_columns), rows - 1), repaired.last_row])
    return CleanBlock(
        *(merge(f, getattr(repaired, n)) for f, n in zip(fields, PRICE_NAMES, strict=True)),
        columns=columns[order],
        lengths=lengths[order],
        last_row=last_row[order],
        failures={int(dirty[c]): reason for c, reason in repaired.failures.items()},
        partial_rows=repaired.partial_rows,
        inconsistent_rows=repaired.inconsistent_rows,
        gap_rows=repaired.gap_rows,
    )


def _repair(
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    *,
    min_bars: int,
    max_stale_bars: int,
) -> CleanBlock:
    open_, high, low, close = (_positive(a) for a in (open_, high, low, close))
    volume = np.array(volume, dtype=np.float64)
    volume[~(volume >= 0)] = 0.0
    rows, width = close.shape
    row_index = np.arange(rows)[:, None]
    has_close = np.isfinite(close)
    listed = has_close.any(axis=0)
    first = np.where(listed, np.argmax(has_close, axis=0), rows)
    last = np.where(listed, rows - 1 - np.argmax(has_close[::-1], axis=0), -1)
    inside = (row_index >= first) & (row_index <= last)

    source_row = np.maximum.accumulate(np.where(has_close, row_index, 0), axis=0)
    carried = np.take_along_axis(close, source_row, axis=0)
    gaps = inside & ~has_close
    previous_close = np.vstack([np.full((1, width), np.nan), carried[:-1]])
    partial = has_close & (np.isnan(open_) | np.isnan(high) | np.isnan(low))

    open_ = np.where(partial & np.isnan(open_), previous_close, open_)
    open_ = np.where(has_close & np.isnan(open_), close, open_)
    with np.errstate(invalid="ignore"):
        inconsistent = (
            has_close
            & ~partial
            & ((high < low) | (high < np.fmax(open_, close)) | (low > np.fmin(open_, close)))
        )
    repair = partial | inconsistent
    stacked = np.stack([open_, high, low, close])
    high = np.where(repair, np.fmax.reduce(stacked, axis=0), high)
    low = np.where(repair, np.fmin.reduce(stacked, axis=0), low)
    for values in (open_, high, low, close):
        values[gaps] = carried[gaps]
    volume[gaps] = 0.0

    lengths = np.where(listed, last - first + 1, 0)
    failures: dict[int, str] = {}
    for column in np.flatnonzero(~listed):
        failures[int(column)] = "no price data in the scan window"
    stale_by = rows - 1 - last
    for column in np.flatnonzero(listed & (stale_by > max_stale_bars)):
        failures[int(column)] = f"stale: no bar in the last {int(stale_by[column])} sessions"
    for column in np.flatnonzero(listed & (lengths < min_bars)):
        failures.setdefault(
            int(column), f"only {int(lengths[column])} bars of history (need {min_bars})"
        )
    keep = np.array([c for c in range(width) if c not in failures], dtype=np.int64)
    depth = int(lengths[keep].max()) if len(keep) else 0
    offsets = np.arange(depth)[:, None]
    source = first[keep] + offsets
    beyond = offsets >= lengths[keep]
    source = np.minimum(source, rows - 1)

    def align(values: np.ndarray) -> np.ndarray:
        aligned = np.take_along_axis(values[:, keep], source, axis=0)
        aligned[beyond] = np.nan
        return aligned

    return CleanBlock(
        open=align(open_),
        high=align(high),
        low=align(low),
        close=align(close),
        volume=align(volume),
        columns=keep,
        lengths=lengths[keep],
        last_row=last[keep],
        failures=failures,
        partial_rows=int((partial & inside).sum()),
        inconsistent_rows=int((inconsistent & inside).sum()),
        gap_rows=int(gaps.sum()),
    )
