"""What a polygon scan needs from outside the engine, made once per process.

The engine never reads the environment: ``technic serve`` and ``technic scan`` build a
``PolygonSource`` from their settings (``source_from_settings``) and hand it to every scan,
so every scan of the process shares one rate limiter (the provider counts requests per
key, not per scan) and one bar store.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from technic.engine.polygon.client import PolygonClient

MISSING_KEY_MESSAGE = (
    "POLYGON_API_KEY is not set (MASSIVE_API_KEY is read too): the polygon provider needs "
    "a Massive (Polygon.io) API key, from the dashboard at https://massive.com"
)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class PolygonSource:
    """The client (key, host, shared limiter), where bars are kept (``store_dir`` None:
    nowhere; each fetch then starts from nothing), and the clock that says which day's bar
    is final (tests pass their own)."""

    client: PolygonClient
    store_dir: Path | None
    now: Callable[[], dt.datetime] = field(default=_utc_now, repr=False)

    @property
    def host_key(self) -> str:
        """Names the API host: bars of a stand-in never mix with the real ones."""
        return hashlib.sha256(self.client.base_url.encode()).hexdigest()[:12]

    @property
    def store_root(self) -> Path | None:
        return self.store_dir / f"polygon-{self.host_key}" if self.store_dir else None


class _PolygonSettings(Protocol):
    polygon_api_key: str | None
    polygon_base_url: str
    polygon_rate_limit: int
    bars_dir: Path


def source_from_settings(settings: _PolygonSettings, *, keep_bars: bool) -> PolygonSource | None:
    """The source the settings describe; None when no key is set (the polygon provider
    then refuses with ``MISSING_KEY_MESSAGE``). ``keep_bars`` is ``USE_CACHE``."""
    if not settings.polygon_api_key:
        return None
    client = PolygonClient(
        api_key=settings.polygon_api_key,
        base_url=settings.polygon_base_url,
        requests_per_minute=settings.polygon_rate_limit,
    )
    return PolygonSource(client, settings.bars_dir if keep_bars else None)
