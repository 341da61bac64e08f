"""What a scan is asked to do, validated the moment it is built.

A ``ScanConfig`` is frozen and checked in ``__post_init__``, so an invalid one cannot
exist: every consumer (CLI, server, worker processes) can trust its fields. Errors are
``InvalidConfig`` naming the field and the allowed range, which the server turns into a
400 with ``field`` set.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from technic.engine.errors import InvalidConfig

Provider = Literal["sample", "synthetic", "csv", "polygon"]
TradeStyle = Literal["day", "swing", "position"]
UniverseSource = Literal["bundled", "market"]

PROVIDERS: tuple[str, ...] = ("sample", "synthetic", "csv", "polygon")
# Polygon.io now operates as Massive: same API, same keys, either name is accepted.
PROVIDER_ALIASES: dict[str, str] = {"massive": "polygon"}
UNIVERSES: tuple[str, ...] = ("bundled", "market")
TRADE_STYLES: tuple[str, ...] = ("day", "swing", "position")
MAX_SYMBOLS_LIMIT = 1_000_000
MAX_NAME_LENGTH = 100
MIN_BARS = 20
MAX_BARS = 10_000


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _number(name: str, value: Any, low: float, high: float, *, integer: bool = False) -> None:
    kind = "a whole number" if integer else "a number"
    span = f"between {_plain(low)} and {_plain(high)}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidConfig(name, f"must be {kind} {span}, got {value!r}")
    if integer and not isinstance(value, int):
        raise InvalidConfig(name, f"must be a whole number, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidConfig(name, f"must be {span}, got {value!r}")


def _names(name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise InvalidConfig(name, f"must be a list of strings, got {value!r}")
    if not all(isinstance(item, str) and item.strip() for item in value):
        raise InvalidConfig(name, "must contain only non-empty strings")
    # A name is shown, stored and written to CSV: a control character (NUL above all, which
    # PostgreSQL cannot store in text) has no place in one, and no real name is that long.
    for item in value:
        if not item.strip().isprintable():
            raise InvalidConfig(name, f"must not contain a control character, got {item!r}")
        if len(item) > MAX_NAME_LENGTH:
            raise InvalidConfig(name, f"entries must be at most {MAX_NAME_LENGTH} characters")
    if len(value) > MAX_SYMBOLS_LIMIT:
        raise InvalidConfig(name, f"may hold at most {MAX_SYMBOLS_LIMIT} entries")
    return tuple(item.strip() for item in value)


@dataclass(frozen=True)
class ScanConfig:
    """One scan's request. Defaults follow the original scanner where they made sense.

    ``max_symbols`` caps the universe after the sector/industry/symbol filters (for the
    synthetic provider it is the number of generated symbols). ``lookback_bars`` is how
    much history the indicators see: 504 bars (two years) gives SMA 200 and the 52-week
    high room to settle. ``risk_pct`` is a percent of ``account_size`` risked per trade.
    ``universe`` "market" (polygon only) scans the active US common stocks the provider
    lists instead of the bundled constituents.
    """

    max_symbols: int = 6000
    min_tech_rating: float = 0.0
    sectors: tuple[str, ...] | None = None
    industries: tuple[str, ...] | None = None
    symbols: tuple[str, ...] | None = None
    as_of: dt.date | None = None
    lookback_bars: int = 504
    trade_style: TradeStyle = "swing"
    account_size: float = 10_000.0
    risk_pct: float = 1.0
    target_rr: float = 2.0
    provider: Provider = "sample"
    data_dir: str | None = None
    universe_file: str | None = None
    bars: int = 504
    seed: int = 7
    adjusted: bool = False
    universe: UniverseSource = "bundled"

    def __post_init__(self) -> None:
        _number("max_symbols", self.max_symbols, 1, MAX_SYMBOLS_LIMIT, integer=True)
        _number("min_tech_rating", self.min_tech_rating, 0, 100)
        _number("lookback_bars", self.lookback_bars, MIN_BARS, MAX_BARS, integer=True)
        _number("account_size", self.account_size, 1, 1e12)
        _number("risk_pct", self.risk_pct, 0.01, 100)
        _number("target_rr", self.target_rr, 0.1, 50)
        _number("bars", self.bars, MIN_BARS, MAX_BARS, integer=True)
        _number("seed", self.seed, 0, 2**63 - 1, integer=True)
        object.__setattr__(self, "sectors", _names("sectors", self.sectors))
        object.__setattr__(self, "industries", _names("industries", self.industries))
        symbols = _names("symbols", self.symbols)
        if symbols is not None:
            symbols = tuple(dict.fromkeys(s.upper() for s in symbols))
        object.__setattr__(self, "symbols", symbols)
        provider = PROVIDER_ALIASES.get(self.provider, self.provider)
        if provider not in PROVIDERS:
            names = ", ".join((*PROVIDERS, *PROVIDER_ALIASES))
            raise InvalidConfig("provider", f"must be one of {names}")
        object.__setattr__(self, "provider", provider)
        if self.universe not in UNIVERSES:
            raise InvalidConfig("universe", f"must be one of {', '.join(UNIVERSES)}")
        if self.universe == "market" and self.provider != "polygon":
            raise InvalidConfig("universe", "the market universe needs the polygon provider")
        if self.universe == "market" and self.universe_file:
            raise InvalidConfig(
                "universe", "a universe file and the market universe exclude each other"
            )
        if self.trade_style not in TRADE_STYLES:
            raise InvalidConfig("trade_style", f"must be one of {', '.join(TRADE_STYLES)}")
        object.__setattr__(self, "as_of", _date("as_of", self.as_of))
        if self.provider == "csv" and not self.data_dir:
            raise InvalidConfig("data_dir", "the csv provider needs a directory of CSV files")
        if not isinstance(self.adjusted, bool):
            raise InvalidConfig("adjusted", f"must be true or false, got {self.adjusted!r}")
        for name in ("data_dir", "universe_file"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidConfig(name, f"must be a non-empty path, got {value!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ScanConfig:
        """Build from JSON-like data; an unknown key is an error, not silently ignored."""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise InvalidConfig(key, f"unknown field; known fields: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["as_of"] = self.as_of.isoformat() if self.as_of else None
        for name in ("sectors", "industries", "symbols"):
            data[name] = list(data[name]) if data[name] is not None else None
        return data


def check_scan_cells(symbols: int, bars: int, max_scan_cells: int | None) -> None:
    """Refuse a scan whose price block, ``symbols`` x ``bars``, is beyond ``max_scan_cells``.

    Why cells: a scan's memory and cache grow with symbols x bars (40 bytes a cell on disk,
    about 50 to 85 in memory at the peak), not with either alone: 100,000 symbols of one
    year cost about what 2,500 symbols of forty years do. ``max_scan_cells`` is the
    ``MAX_SCAN_CELLS`` setting (None: no limit); the field named is the one every provider
    lets a request change.
    """
    cells = symbols * bars
    if max_scan_cells is not None and cells > max_scan_cells:
        raise InvalidConfig(
            "max_symbols",
            f"{symbols:,} symbols x {bars:,} bars = {cells:,} cells is more than "
            f"MAX_SCAN_CELLS ({max_scan_cells:,}); ask for fewer symbols or bars",
        )


def _date(name: str, value: Any) -> dt.date | None:
    if value is None or (isinstance(value, dt.date) and not isinstance(value, dt.datetime)):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise InvalidConfig(name, f"must be a date as YYYY-MM-DD, got {value!r}")
