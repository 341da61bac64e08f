"""What operators watch, in Prometheus's exposition format: ``GET /metrics``.

Each application owns a :class:`Metrics` with its own ``CollectorRegistry``, never
prometheus_client's global one, so that several applications in one process (the tests
start dozens) keep separate counts and never collide on a metric name.

Two kinds of series:

- Events the service observes once each are prometheus_client instruments updated where
  they happen: request latency (by route, method and status), scans by final status, stage
  durations, block-cache lookups.
- Counters the hub and the stream handlers already keep as plain integers on their hot
  paths (a publish sweep writes one frame to thousands of watchers, and a prometheus
  counter takes a lock per increment) are read at scrape time by :class:`_ServiceCollector`:
  watchers open now, frames sent, snapshots conflated, scans running and queued.

``process_*`` series (resident memory, CPU, open files) come from prometheus_client's
``ProcessCollector``, registered on the same registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from technic.engine.eta import CHECKPOINTS
from technic.engine.progress import SCAN_STAGES, TERMINAL_STATUSES
from technic.storage.retention import PRUNED_TABLES

if TYPE_CHECKING:
    from technic.server.bus import BusStats, RedisBus
    from technic.server.hub import Hub
    from technic.server.jobs import JobManager
    from technic.server.streams import StreamStats

# Request latency: from a cached JSON answer (~1 ms) to a synchronous scan (seconds).
REQUEST_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Stage durations: a cached fetch of a few symbols (ms) to a 100k-symbol scan (minutes).
# Absolute ETA error in percent of the time that remained: 10 is the goal at 10 %.
ETA_ERROR_BUCKETS_PCT = (1, 2.5, 5, 10, 15, 25, 50, 100, 250)
STAGE_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
# Methods outside this set are counted as "other": the method is the client's text, and a
# label taken from it verbatim would let any client create series without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """One application's registry and the instruments the service updates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_duration = Histogram(
            "technic_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template, method and status "
            "(WebSocket and SSE streams are counted by technic_watchers_connected_total).",
            ["route", "method", "status"],
            buckets=REQUEST_BUCKETS_S,
            registry=self.registry,
        )
        self.scans_finished = Counter(
            "technic_scans_finished",
            "Scans that reached a final status (interrupted: found left running at start).",
            ["status"],
            registry=self.registry,
        )
        self.stage_duration = Histogram(
            "technic_stage_duration_seconds",
            "Duration of each completed scan stage.",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=self.registry,
        )
        self.eta_error = Histogram(
            "technic_eta_abs_error_percent",
            "Absolute error of a completed scan's overall ETA, in percent of the time that "
            "actually remained, noted when the scan passed each checkpoint (percent of its "
            "expected time).",
            ["checkpoint"],
            buckets=ETA_ERROR_BUCKETS_PCT,
            registry=self.registry,
        )
        self.cache_lookups = Counter(
            "technic_block_cache_lookups",
            "Scans whose price block was looked up in the block cache, by result.",
            ["result"],
            registry=self.registry,
        )
        self.rows_pruned = Counter(
            "technic_pruned_rows",
            "Rows removed by retention pruning (RESULTS_RETENTION_DAYS, TIMINGS_RETENTION_DAYS), "
            "by table.",
            ["table"],
            registry=self.registry,
        )
        # Every label value known in advance is exported from the start at 0, so that a
        # rate() over the first increment is right and dashboards show no gaps.
        for status in sorted(TERMINAL_STATUSES):
            self.scans_finished.labels(status)
        for stage, _ in SCAN_STAGES:
            self.stage_duration.labels(stage)
        for checkpoint in CHECKPOINTS:
            self.eta_error.labels(str(checkpoint))
        for result in ("hit", "miss"):
            self.cache_lookups.labels(result)
        for table in PRUNED_TABLES:
            self.rows_pruned.labels(table)
        self._service = _ServiceCollector()
        self.registry.register(self._service)
        ProcessCollector(registry=self.registry)

    def attach(self, *, jobs: JobManager, hub: Hub, streams: StreamStats) -> None:
        """Read these at scrape time; they exist only once the application has started."""
        self._service.jobs, self._service.hub, self._service.streams = jobs, hub, streams

    def attach_bus(self, bus: RedisBus) -> None:
        """Fleet mode: the Redis bus's counters, read at scrape time."""
        self._service.bus = bus

    def observe_request(self, route: str, method: str, status: int, duration_s: float) -> None:
        method = method if method in KNOWN_METHODS else "other"
        self.request_duration.labels(route, method, str(status)).observe(duration_s)

    def scan_finished(self, status: str, count: int = 1) -> None:
        self.scans_finished.labels(status).inc(count)

    def stage_completed(self, stage: str, duration_s: float) -> None:
        self.stage_duration.labels(stage).observe(duration_s)

    def eta_checkpoint(self, checkpoint: int, error_pct: float | None) -> None:
        if error_pct is not None:
            self.eta_error.labels(str(checkpoint)).observe(abs(error_pct))

    def cache_lookup(self, *, hit: bool) -> None:
        self.cache_lookups.labels("hit" if hit else "miss").inc()

    def pruned(self, table: str, rows: int) -> None:
        self.rows_pruned.labels(table).inc(rows)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The body and its Content-Type: OpenMetrics when the scraper asks for it
        (Prometheus does), the classic text format otherwise."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class _ServiceCollector:
    """Counters kept by the job manager, the hub and the stream handlers, read on scrape."""

    def __init__(self) -> None:
        self.jobs: JobManager | None = None
        self.hub: Hub | None = None
        self.streams: StreamStats | None = None
        self.bus: RedisBus | None = None

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        return self._families()

    def _families(self) -> Iterator[Metric]:
        jobs, hub, streams = self.jobs, self.hub, self.streams
        scans = GaugeMetricFamily(
            "technic_scans", "Scans running or waiting in the queue now.", labels=["state"]
        )
        if jobs is not None:
            scans.add_metric(["running"], len(jobs.running))
            scans.add_metric(["queued"], len(jobs.queued))
        yield scans
        watchers = GaugeMetricFamily(
            "technic_watchers", "Progress watchers connected now.", labels=["transport"]
        )
        connected = CounterMetricFamily(
            "technic_watchers_connected", "Progress watchers accepted.", labels=["transport"]
        )
        frames = CounterMetricFamily(
            "technic_frames_sent",
            "Progress snapshots written to watchers (WebSocket frames, SSE events).",
            labels=["transport"],
        )
        if streams is not None:
            watchers.add_metric(["websocket"], streams.open_websockets)
            watchers.add_metric(["sse"], streams.open_sse)
            connected.add_metric(["websocket"], streams.websockets_opened)
            connected.add_metric(["sse"], streams.sse_opened)
            frames.add_metric(["websocket"], streams.ws_messages_sent)
            frames.add_metric(["sse"], streams.sse_messages_sent)
        yield from (watchers, connected, frames)
        published = CounterMetricFamily(
            "technic_snapshots_published", "Progress snapshots published to the hub."
        )
        conflated = CounterMetricFamily(
            "technic_snapshots_conflated",
            "Snapshots replaced by a newer one before a slow watcher read them.",
        )
        if hub is not None:
            stats = hub.stats()
            published.add_metric([], stats.published)
            conflated.add_metric([], stats.conflated)
        yield from (published, conflated)
        if self.bus is not None:
            yield from _bus_families(self.bus.stats())


def _bus_families(stats: BusStats) -> Iterator[Metric]:
    """Fleet mode only: what went through Redis, and whether it is reachable."""
    messages = CounterMetricFamily(
        "technic_redis_messages",
        "Progress messages written to Redis (local scans), dropped unwritten because a "
        "newer state of the same scan replaced them (e.g. during an outage), and heard "
        "from Redis.",
        labels=["outcome"],
    )
    messages.add_metric(["written"], stats.written)
    messages.add_metric(["dropped"], stats.dropped)
    messages.add_metric(["received"], stats.received)
    reconnects = CounterMetricFamily(
        "technic_redis_reconnects", "Times the Redis subscription was re-established."
    )
    reconnects.add_metric([], stats.reconnects)
    available = GaugeMetricFamily("technic_redis_available", "1 while Redis is reachable.")
    available.add_metric([], 1 if stats.available else 0)
    yield from (messages, reconnects, available)
