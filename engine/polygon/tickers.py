"""The market universe: the active US common stocks the provider lists, with sectors.

The list comes from ``/v3/reference/tickers?market=stocks&type=CS&active=true`` (1,000 a
page, pages by ``next_url``: about six requests) and is kept for the day. The list has no
sector; ``/v3/reference/tickers/{T}`` has the SEC's SIC code and its description, one
request per symbol. The sector is the code's SIC division (ten of them, listed below) and
the industry its description. Details are fetched only for the symbols a scan needs — every
listed one when it filters by sector or industry, else the ones it selects — and kept for
``DETAILS_KEPT_DAYS``, so the next scan asks for none. Those requests are the universe
stage's units, with the same rate-limited ETA as the bars.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import tempfile
from collections.abc import Hashable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson
from technic.engine.block import Universe
from technic.engine.errors import DataError
from technic.engine.polygon.batch import Request, RequestBatch
from technic.engine.polygon.calendar import NEW_YORK
from technic.engine.polygon.source import PolygonSource
from technic.engine.providers import StageProgress
from technic.engine.scan_config import ScanConfig
from technic.engine.universe import select

log = logging.getLogger(__name__)

DETAILS_KEPT_DAYS = 90
LIST_PATH = "/v3/reference/tickers"
LIST_PARAMS = {"market": "stocks", "type": "CS", "active": "true", "limit": 1000}
SIC_DIVISIONS: tuple[tuple[int, int, str], ...] = (
    (1, 9, "Agriculture, Forestry and Fishing"),
    (10, 14, "Mining"),
    (15, 17, "Construction"),
    (20, 39, "Manufacturing"),
    (40, 49, "Transportation, Communications and Utilities"),
    (50, 51, "Wholesale Trade"),
    (52, 59, "Retail Trade"),
    (60, 67, "Finance, Insurance and Real Estate"),
    (70, 89, "Services"),
    (91, 99, "Public Administration"),
)


def sic_division(code: Any) -> str:
    """The SIC division of a four-digit SIC code ("" when there is none)."""
    try:
        major = int(str(code).strip()[:2])
    except ValueError:
        return ""
    return next((name for low, high, name in SIC_DIVISIONS if low <= major <= high), "")


def market_universe(source: PolygonSource, config: ScanConfig, progress: StageProgress) -> Universe:
    root = source.store_root / "universe" if source.store_root else None
    today = source.now().astimezone(NEW_YORK).date()
    batch = RequestBatch(source.client, progress)
    listed = _listed(root, today, batch)
    if not listed:
        raise DataError("the provider lists no active US common stocks")
    symbols = np.array(sorted(listed), dtype=object)
    details = _read_json(root / "details.json") if root else {}
    fresh = {
        s: d
        for s, d in details.items()
        if dt.date.fromisoformat(d["fetched_on"]) >= today - dt.timedelta(days=DETAILS_KEPT_DAYS)
    }
    universe = _universe(symbols, listed, fresh)
    if config.sectors or config.industries:
        needed = [str(s) for s in symbols if str(s) not in fresh]
    else:
        chosen, _ = select(
            universe,
            sectors=None,
            industries=None,
            symbols=config.symbols,
            max_symbols=config.max_symbols,
        )
        needed = [str(s) for s in chosen.symbols if str(s) not in fresh]
    if needed:
        fetched: dict[str, Any] = {}
        try:
            _details(needed, today, batch, fetched)
        finally:  # what was fetched is kept, even when the scan is cancelled
            if root is not None and fetched:
                _write_json(root / "details.json", {**details, **fetched})
        fresh.update(fetched)
    return _universe(symbols, listed, fresh)


def _universe(symbols: np.ndarray, names: dict[str, str], details: dict[str, Any]) -> Universe:
    empty: dict[str, Any] = {}
    rows = [details.get(str(s), empty) for s in symbols]
    return Universe(
        symbols,
        np.array([names[str(s)] for s in symbols], dtype=object),
        np.array([sic_division(r.get("sic_code")) for r in rows], dtype=object),
        np.array([str(r.get("sic_description") or "").title() for r in rows], dtype=object),
    )


def _listed(root: Path | None, today: dt.date, batch: RequestBatch) -> dict[str, str]:
    """Symbol -> name of the active common stocks, fetched at most once a day."""
    kept = root / f"tickers-{today.isoformat()}.json" if root else None
    if kept is not None and kept.is_file():
        return _read_json(kept)
    listed: dict[str, str] = {}
    failures: list[str] = []

    def on_answer(key: Hashable, answer: dict[str, Any]) -> str | None:
        for row in answer.get("results") or []:
            if isinstance(row, dict) and isinstance(row.get("ticker"), str):
                listed[row["ticker"]] = str(row.get("name") or "")
        next_url = answer.get("next_url")
        return next_url if isinstance(next_url, str) and next_url else None

    batch.plan(1, "the list of US common stocks")
    batch.run([Request("list", LIST_PATH, LIST_PARAMS)], on_answer, lambda _, r: failures.append(r))
    if failures:
        raise DataError(f"the list of US common stocks could not be fetched: {failures[0]}")
    if kept is not None:
        for stale in kept.parent.glob("tickers-*.json"):
            stale.unlink(missing_ok=True)
        _write_json(kept, listed)
    return listed


def _details(
    symbols: list[str], today: dt.date, batch: RequestBatch, found: dict[str, Any]
) -> None:
    """Fill ``found`` with the SIC code and description of each of ``symbols``."""

    def on_answer(key: Hashable, answer: dict[str, Any]) -> str | None:
        result = answer.get("results")
        result = result if isinstance(result, dict) else {}
        found[str(key)] = {
            "sic_code": result.get("sic_code"),
            "sic_description": result.get("sic_description"),
            "fetched_on": today.isoformat(),
        }
        return None

    def on_failure(key: Hashable, reason: str) -> None:
        log.warning("polygon: no details for %s (%s); its sector stays empty", key, reason)

    batch.plan(len(symbols), f"details of {len(symbols)} symbols")
    requests = [Request(s, f"{LIST_PATH}/{quote(s, safe='')}") for s in symbols]
    batch.run(requests, on_answer, on_failure)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".", delete=False) as handle:
        handle.write(orjson.dumps(data))
    try:
        os.replace(handle.name, path)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(handle.name)
        raise
