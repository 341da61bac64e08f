"""Prometheus text exposition of what operators watch: scans, stages, watchers, latency.

Written by hand (the format is a few lines of text) rather than pulling in a client
library for a dozen series.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Metrics:
    """Request count and time per route."""

    request_count: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    request_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def observe_request(self, route: str, seconds: float) -> None:
        self.request_count[route] += 1
        self.request_seconds[route] += seconds


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _series(
    lines: list[str], name: str, kind: str, help_text: str, samples: list[tuple[str, Any]]
) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        lines.append(f"{name}{labels} {value}")


def render_metrics(metrics: Metrics, jobs: Any, hub: Any, stream_stats: Any) -> str:
    lines: list[str] = []
    _series(
        lines,
        "technic_scans",
        "gauge",
        "Scans seen by this process, by status.",
        [(f'{{status="{_escape(s)}"}}', n) for s, n in sorted(jobs.scans_by_status.items())],
    )
    durations = {k: v for k, v in jobs.stage_seconds.items() if k != "total"}
    _series(
        lines,
        "technic_stage_duration_seconds_sum",
        "counter",
        "Seconds spent per stage.",
        [(f'{{stage="{s}"}}', f"{sum(v):.6f}") for s, v in sorted(durations.items())],
    )
    _series(
        lines,
        "technic_stage_duration_seconds_count",
        "counter",
        "Stages completed.",
        [(f'{{stage="{s}"}}', len(v)) for s, v in sorted(durations.items())],
    )
    _series(
        lines,
        "technic_open_connections",
        "gauge",
        "Open watcher connections.",
        [
            ('{kind="websocket"}', stream_stats.open_websockets),
            ('{kind="sse"}', stream_stats.open_sse),
        ],
    )
    _series(
        lines,
        "technic_messages_sent_total",
        "counter",
        "Progress messages written to watchers.",
        [("", stream_stats.messages_sent)],
    )
    hub_stats = hub.stats()
    _series(
        lines,
        "technic_updates_conflated_total",
        "counter",
        "Snapshots replaced before a slow watcher read them.",
        [("", hub_stats.conflated)],
    )
    _series(
        lines,
        "technic_http_request_duration_seconds_sum",
        "counter",
        "Request time per route.",
        [
            (f'{{route="{_escape(r)}"}}', f"{s:.6f}")
            for r, s in sorted(metrics.request_seconds.items())
        ],
    )
    _series(
        lines,
        "technic_http_request_duration_seconds_count",
        "counter",
        "Requests per route.",
        [(f'{{route="{_escape(r)}"}}', n) for r, n in sorted(metrics.request_count.items())],
    )
    lookups = jobs.cache_hits + jobs.cache_misses
    _series(
        lines,
        "technic_cache_hit_ratio",
        "gauge",
        "Share of scans whose data came from cache.",
        [("", f"{jobs.cache_hits / lookups:.4f}" if lookups else "0")],
    )
    return "\n".join(lines) + "\n"
