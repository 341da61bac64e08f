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
# Host names a local server always answers to; ``allowed_hosts`` adds the one it binds.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_BIND_HOSTS = ("0.0.0.0", "::", "")
# MAX_SCAN_CELLS: a scan's memory and cache grow with symbols x bars. Measured with
# `technic scan` (synthetic, 2 workers, whole process tree): at 32 million cells one scan
# peaks at 1.5 GiB (100,000 x 320 bars, or 63,000 x 504) to 2.5 GiB (3,200 x 10,000 bars)
# of memory and writes 1.2 GiB of cache. The default 2 concurrent scans then need at most
# 5 GiB, and even 4 at once 10 GiB, of a 24 GiB machine, leaving room for the server, its
# watchers and the page cache that holds the blocks being read. Admitted: 100,000 symbols
# of 320 bars, 63,000 of 504, 10,000 of 3,200, the whole sample (504 x 1,258); refused:
# the 5,000 x 10,000 request that took 3.3 GiB (50 million cells).
DEFAULT_MAX_SCAN_CELLS = 32_000_000
# CACHE_MAX_BYTES: room for a block at the cell limit (1.2 GiB) and a few smaller ones.
DEFAULT_CACHE_MAX_BYTES = 2 << 30
# A server says it is alive every OWNER_HEARTBEAT_S; one silent for OWNER_TIMEOUT_S is dead
# and its unfinished scans are marked interrupted. The timeout spans several heartbeats so
# that a slow write or a busy moment is not taken for a death.
DEFAULT_OWNER_HEARTBEAT_S = 5
DEFAULT_OWNER_TIMEOUT_S = 30
MIN_HEARTBEATS_PER_TIMEOUT = 2
# Retention: result and failure rows of a scan finished more than RESULTS_RETENTION_DAYS ago
# are pruned (~10 million rows a day for a 100,000-symbol scan every 15 minutes); whole scans
# (record, stage timings, ETA checkpoints) after TIMINGS_RETENTION_DAYS. 0 keeps forever.
DEFAULT_RESULTS_RETENTION_DAYS = 30
DEFAULT_TIMINGS_RETENTION_DAYS = 365
MAX_RETENTION_DAYS = 36_500
# `technic serve` prunes every PRUNE_INTERVAL_S (the first run sooner, see server/retention.py)
DEFAULT_PRUNE_INTERVAL_S = 3600
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


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    value = _optional(env, name)
    return tuple(item.strip() for item in value.split(",") if item.strip()) if value else None


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """``scheme://host[:port]`` entries (a trailing slash dropped), or ``*``."""
    origins = []
    for item in _list(env, name) or ():
        origin = item.rstrip("/")
        scheme, _, rest = origin.partition("://")
        if origin != "*" and (scheme not in ("http", "https") or not rest or "/" in rest):
            raise SettingsError(name, f"must list origins like https://host[:port], got {item!r}")
        origins.append(origin)
    return tuple(origins)


def _hosts(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    """Host names (``[::1]`` or ``::1`` for IPv6; a port is ignored), or ``*``; None when
    unset."""
    hosts = []
    for item in _list(env, name) or ():
        host = item.lower()
        if host.startswith("["):
            host = host[1:].partition("]")[0]
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        if not host or "/" in item or " " in item:
            raise SettingsError(name, f"must list host names without scheme or path, got {item!r}")
        hosts.append(host)
    return tuple(hosts) or None


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    value = _optional(env, name)
    if value is not None and not value.startswith(tuple(f"{s}://" for s in schemes)):
        prefixes = [f"{scheme}://" for scheme in schemes]
        expected = ", ".join(prefixes[:-1]) + f" or {prefixes[-1]}"
        raise SettingsError(name, f"must start with {expected}")  # the value may hold a password
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
    # None: the loopback names and ``host`` (see ``allowed_hosts``); ("*",): any Host.
    allowed_hosts_setting: tuple[str, ...] | None = None
    max_concurrent_scans: int = 2
    max_queued_scans: int = 16
    max_connections: int = 20_000
    max_symbols_cap: int = 100_000
    max_scan_cells: int = DEFAULT_MAX_SCAN_CELLS
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES
    owner_heartbeat_s: int = DEFAULT_OWNER_HEARTBEAT_S
    owner_timeout_s: int = DEFAULT_OWNER_TIMEOUT_S
    log_level: str = "INFO"
    results_retention_days: int = DEFAULT_RESULTS_RETENTION_DAYS
    timings_retention_days: int = DEFAULT_TIMINGS_RETENTION_DAYS
    prune_interval_s: int = DEFAULT_PRUNE_INTERVAL_S
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

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        """Host header names this server answers to (against DNS rebinding).

        ``TECHNIC_ALLOWED_HOSTS`` when set; otherwise the loopback names, plus ``host``
        when the server binds one address (a server on 0.0.0.0 cannot know its public
        names: behind a proxy or on a LAN, the operator lists them).
        """
        if self.allowed_hosts_setting is not None:
            return self.allowed_hosts_setting
        host = self.host.lower().removeprefix("[").removesuffix("]")
        if host in WILDCARD_BIND_HOSTS or host in LOOPBACK_HOSTS:
            return LOOPBACK_HOSTS
        return (*LOOPBACK_HOSTS, host)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        log_level = (env.get("LOG_LEVEL") or "INFO").strip().upper()
        if log_level not in LOG_LEVELS:
            raise SettingsError("LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}")
        data_dir = _optional(env, "TECHNIC_DATA_DIR")
        heartbeat_s = _int(env, "OWNER_HEARTBEAT_S", DEFAULT_OWNER_HEARTBEAT_S, 1, 3600)
        timeout_s = _int(env, "OWNER_TIMEOUT_S", DEFAULT_OWNER_TIMEOUT_S, 1, 86_400)
        if timeout_s < MIN_HEARTBEATS_PER_TIMEOUT * heartbeat_s:
            raise SettingsError(
                "OWNER_TIMEOUT_S",
                f"must be at least {MIN_HEARTBEATS_PER_TIMEOUT} x OWNER_HEARTBEAT_S "
                f"({MIN_HEARTBEATS_PER_TIMEOUT * heartbeat_s}), got {timeout_s}",
            )
        results_days = _int(
            env, "RESULTS_RETENTION_DAYS", DEFAULT_RESULTS_RETENTION_DAYS, 0, MAX_RETENTION_DAYS
        )
        timings_days = _int(
            env, "TIMINGS_RETENTION_DAYS", DEFAULT_TIMINGS_RETENTION_DAYS, 0, MAX_RETENTION_DAYS
        )
        # pruning timings deletes whole scans, results included: never before the results
        if timings_days and not 0 < results_days <= timings_days:
            raise SettingsError(
                "TIMINGS_RETENTION_DAYS",
                f"must be 0 (keep forever) or at least RESULTS_RETENTION_DAYS ({results_days}"
                f"{', which keeps results forever' if not results_days else ''}),"
                f" got {timings_days}",
            )
        return cls(
            host=_optional(env, "HOST") or "127.0.0.1",
            port=_int(env, "PORT", 8000, 0, 65535),
            database_url=_url(env, "DATABASE_URL", ("postgresql", "postgres")),
            redis_url=_url(env, "REDIS_URL", ("redis", "rediss", "unix")),
            max_workers=_int(env, "MAX_WORKERS", os.cpu_count() or 1, 1, 256),
            use_cache=_bool(env, "USE_CACHE", True),
            data_dir=Path(data_dir).expanduser() if data_dir else Path(user_data_dir("technic")),
            api_token=_optional(env, "TECHNIC_API_TOKEN"),
            allowed_origins=_origins(env, "TECHNIC_ALLOWED_ORIGINS"),
            allowed_hosts_setting=_hosts(env, "TECHNIC_ALLOWED_HOSTS"),
            max_concurrent_scans=_int(env, "MAX_CONCURRENT_SCANS", 2, 1, 64),
            max_queued_scans=_int(env, "MAX_QUEUED_SCANS", 16, 0, 10_000),
            max_connections=_int(env, "MAX_CONNECTIONS", 20_000, 1, 1_000_000),
            max_symbols_cap=_int(env, "MAX_SYMBOLS_CAP", 100_000, 1, 1_000_000),
            max_scan_cells=_int(env, "MAX_SCAN_CELLS", DEFAULT_MAX_SCAN_CELLS, 1, 10**12),
            cache_max_bytes=_int(env, "CACHE_MAX_BYTES", DEFAULT_CACHE_MAX_BYTES, 0, 2**62),
            owner_heartbeat_s=heartbeat_s,
            owner_timeout_s=timeout_s,
            log_level=log_level,
            results_retention_days=results_days,
            timings_retention_days=timings_days,
            prune_interval_s=_int(env, "PRUNE_INTERVAL_S", DEFAULT_PRUNE_INTERVAL_S, 1, 86_400),
            polygon_api_key=_optional(env, "POLYGON_API_KEY") or _optional(env, "MASSIVE_API_KEY"),
            polygon_base_url=(
                _url(env, "POLYGON_BASE_URL", ("https", "http")) or POLYGON_DEFAULT_BASE_URL
            ).rstrip("/"),
            polygon_rate_limit=_int(
                env, "POLYGON_RATE_LIMIT", POLYGON_FREE_PLAN_REQUESTS_PER_MINUTE, 1, 1_000_000
            ),
        )
