"""Every setting of technic, read once from the environment and validated at start.

Why one dataclass: the server, the CLI and the tests all need the same values with the
same defaults, and a wrong value must stop start-up with one line that names it rather
than surface later as a confusing failure deep inside a scan.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from platformdirs import user_data_dir

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
POLYGON_DEFAULT_BASE_URL = "https://api.massive.com"
POLYGON_FREE_PLAN_REQUESTS_PER_MINUTE = 5


class SettingsError(ValueError):
    """An environment variable has a value technic cannot use; ``name`` says which."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(name, f"must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(name, f"must be between {low} and {high}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(name, f"must be true or false, got {raw!r}")


def _optional(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    return raw.strip() if raw and raw.strip() else None


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    value = _optional(env, name)
    if value is not None and not value.startswith(tuple(f"{s}://" for s in schemes)):
        raise SettingsError(name, f"must start with one of {', '.join(schemes)}://")
    return value


@dataclass(frozen=True)
class Settings:
    """Service settings. Build with ``Settings.from_env()``; every field has a safe default."""

    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str | None = None
    redis_url: str | None = None
    max_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    use_cache: bool = True
    data_dir: Path = field(default_factory=lambda: Path(user_data_dir("technic")))
    api_token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    max_concurrent_scans: int = 2
    max_queued_scans: int = 16
    max_connections: int = 20_000
    max_symbols_cap: int = 100_000
    log_level: str = "INFO"
    # The Massive (Polygon.io) key: kept out of repr, so a logged Settings never shows it.
    polygon_api_key: str | None = field(default=None, repr=False)
    polygon_base_url: str = POLYGON_DEFAULT_BASE_URL
    polygon_rate_limit: int = POLYGON_FREE_PLAN_REQUESTS_PER_MINUTE

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def bars_dir(self) -> Path:
        """The incremental bar store of network providers (kept with the block cache)."""
        return self.data_dir / "bars"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        log_level = (env.get("LOG_LEVEL") or "INFO").strip().upper()
        if log_level not in LOG_LEVELS:
            raise SettingsError("LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}")
        data_dir = _optional(env, "TECHNIC_DATA_DIR")
        origins = _optional(env, "TECHNIC_ALLOWED_ORIGINS")
        return cls(
            host=_optional(env, "HOST") or "127.0.0.1",
            port=_int(env, "PORT", 8000, 0, 65535),
            database_url=_url(env, "DATABASE_URL", ("postgresql", "postgres")),
            redis_url=_url(env, "REDIS_URL", ("redis", "rediss", "unix")),
            max_workers=_int(env, "MAX_WORKERS", os.cpu_count() or 1, 1, 256),
            use_cache=_bool(env, "USE_CACHE", True),
            data_dir=Path(data_dir).expanduser() if data_dir else Path(user_data_dir("technic")),
            api_token=_optional(env, "TECHNIC_API_TOKEN"),
            allowed_origins=tuple(o.strip() for o in origins.split(",") if o.strip())
            if origins
            else (),
            max_concurrent_scans=_int(env, "MAX_CONCURRENT_SCANS", 2, 1, 64),
            max_queued_scans=_int(env, "MAX_QUEUED_SCANS", 16, 0, 10_000),
            max_connections=_int(env, "MAX_CONNECTIONS", 20_000, 1, 1_000_000),
            max_symbols_cap=_int(env, "MAX_SYMBOLS_CAP", 100_000, 1, 1_000_000),
            log_level=log_level,
            polygon_api_key=_optional(env, "POLYGON_API_KEY") or _optional(env, "MASSIVE_API_KEY"),
            polygon_base_url=(
                _url(env, "POLYGON_BASE_URL", ("https", "http")) or POLYGON_DEFAULT_BASE_URL
            ).rstrip("/"),
            polygon_rate_limit=_int(
                env, "POLYGON_RATE_LIMIT", POLYGON_FREE_PLAN_REQUESTS_PER_MINUTE, 1, 1_000_000
            ),
        )
