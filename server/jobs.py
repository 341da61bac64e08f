"""The job manager: queues scans, runs them on the shared worker pool, reports and records.

At most ``max_concurrent_scans`` run at once; the rest wait in FIFO order, up to
``max_queued_scans`` (then ``QueueFull``, which the HTTP layer answers with 429 and
Retry-After). Each scan's orchestrator (``engine.run_scan``) runs in a thread; its progress
callback hops onto the event loop with ``call_soon_threadsafe`` and is published to the hub
as it happens — nothing polls. Stage starts and ends, results and the final state go to
the ``Persister``, which keeps them through a database outage.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from technic.engine import MultiStageProgressTracker, ScanConfig, ScanResult, run_scan
from technic.engine.eta import HISTORY_SCANS, StagePrior, fit_priors, scan_kind
from technic.engine.polygon.source import PolygonSource
from technic.engine.progress import STAGE_END_STATUSES, TERMINAL_STATUSES, Snapshot
from technic.engine.workers import WorkerPool
from technic.server.hub import Hub
from technic.server.persist import Persister
from technic.storage import Repository, StorageError

if TYPE_CHECKING:
    from technic.server.metrics import Metrics

log = logging.getLogger(__name__)

FINISHED_JOBS_KEPT = 256
# How many recent scan durations the Retry-After estimate averages.
RECENT_DURATIONS_KEPT = 20
PRIORS_TIMEOUT_S = 2.0


# per stage, (units, seconds, tail seconds) of one scan: what engine.eta learns from
StageRuns = dict[str, tuple[float, float, float | None]]


class QueueFull(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__("too many scans queued; retry later")
        self.retry_after_s = retry_after_s


class NotAccepting(Exception):
    """The server is shutting down."""


@dataclass
class Job:
    """A scan this process runs or ran. It never holds the scan's result rows: they go to
    storage when the scan ends, and a finished job keeps only a few fields."""

    scan_id: str
    config: ScanConfig
    cancel: threading.Event = field(default_factory=threading.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # set once everything the scan produced (final state, results, failures) is stored
    stored: asyncio.Event = field(default_factory=asyncio.Event)
    status: str = "pending"
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    stage_status: dict[str, str] = field(default_factory=dict)


class JobManager:
    def __init__(
        self,
        *,
        repository: Repository,
        hub: Hub,
        persister: Persister,
        pool: WorkerPool,
        metrics: Metrics,
        cache_dir: Path | None,
        max_concurrent_scans: int,
        max_queued_scans: int,
        max_scan_cells: int | None = None,
        cache_max_bytes: int | None = None,
        owner: str | None = None,
        progress_interval_s: float = 0.1,
        polygon: PolygonSource | None = None,
    ) -> None:
        self.repository = repository
        self.hub = hub
        self.persister = persister
        self.pool = pool
        self.metrics = metrics
        self.cache_dir = cache_dir
        self.max_scan_cells = max_scan_cells
        self.cache_max_bytes = cache_max_bytes
        self.owner = owner
        self.max_concurrent_scans = max_concurrent_scans
        self.max_queued_scans = max_queued_scans
        self.progress_interval_s = progress_interval_s
        # built once, so every scan shares the key's rate limiter (None: no key set)
        self.polygon = polygon
        self.accepting = True
        self._recent_durations_s: deque[float] = deque(maxlen=RECENT_DURATIONS_KEPT)
        # per kind, the stage runs of scans this server finished that storage does not have
        # yet (saving 100,000 rows takes a second or two): the next scan learns from them too
        self._unstored_runs: dict[str, deque[tuple[Job, StageRuns]]] = {}
        self._queue: deque[Job] = deque()
        self._queue_ready = asyncio.Condition()
        self._running: dict[str, Job] = {}
        self._finished: OrderedDict[str, Job] = OrderedDict()
        self._threads = ThreadPoolExecutor(max_concurrent_scans, thread_name_prefix="scan")
        self._runners: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._runners = [
            asyncio.create_task(self._runner(), name=f"scan-runner-{i}")
            for i in range(self.max_concurrent_scans)
        ]

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop taking scans, cancel queued and running ones, wait for them to be recorded."""
        self.accepting = False
        while self._queue:
            self._cancel_queued(self._queue.popleft())
        running = list(self._running.values())
        for job in running:
            job.cancel.set()
        if running:
            waits = [asyncio.create_task(job.done.wait()) for job in running]
            await asyncio.wait(waits, timeout=timeout_s)
        for task in self._runners:
            task.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        self._threads.shutdown(wait=False, cancel_futures=True)

    # -- queries --------------------------------------------------------------------------

    def get(self, scan_id: str) -> Job | None:
        for job in self._queue:
            if job.scan_id == scan_id:
                return job
        return self._running.get(scan_id) or self._finished.get(scan_id)

    async def wait_stored(self, job: Job, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a finished job's writes; False if they are not done."""
        try:
            await asyncio.wait_for(job.stored.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    @property
    def running(self) -> list[Job]:
        return list(self._running.values())

    @property
    def queued(self) -> list[Job]:
        return list(self._queue)

    # -- commands -------------------------------------------------------------------------

    async def submit(self, config: ScanConfig) -> Job:
        if not self.accepting:
            raise NotAccepting("the server is shutting down")
        busy = len(self._running) >= self.max_concurrent_scans
        if busy and len(self._queue) >= self.max_queued_scans:
            raise QueueFull(retry_after_s=self._retry_after_s())
        job = Job(scan_id=str(uuid.uuid4()), config=config)
        tracker = MultiStageProgressTracker(scan_id=job.scan_id)
        snapshot = tracker.snapshot()
        snapshot["message"] = "Scan queued"
        self.hub.publish(job.scan_id, snapshot)
        scan_uuid = uuid.UUID(job.scan_id)
        self.persister.submit(
            f"create scan {job.scan_id}",
            lambda: self.repository.create_scan(scan_uuid, config.to_dict(), owner=self.owner),
        )
        self._queue.append(job)
        async with self._queue_ready:
            self._queue_ready.notify()
        return job

    def cancel(self, scan_id: str) -> Job | None:
        """Cancel a queued or running scan; a finished one is returned unchanged."""
        job = self.get(scan_id)
        if job is None:
            return None
        if job in self._queue:
            self._queue.remove(job)
            self._cancel_queued(job)
        elif job.scan_id in self._running:
            job.cancel.set()
        return job

    # -- internals ------------------------------------------------------------------------

    def _retry_after_s(self) -> int:
        durations = self._recent_durations_s or (10.0,)
        mean_s = sum(durations) / len(durations)
        return max(1, int(mean_s * (len(self._queue) + 1) / self.max_concurrent_scans))

    def _cancel_queued(self, job: Job) -> None:
        tracker = MultiStageProgressTracker(scan_id=job.scan_id)
        tracker.finish("cancelled", "Scan cancelled before it started")
        self.hub.publish(job.scan_id, tracker.snapshot())
        self._finish(job, "cancelled", None)

    def _finish(
        self,
        job: Job,
        status: str,
        error: str | None,
        result: ScanResult | None = None,
        *,
        kind: str | None = None,
    ) -> None:
        """Record the end of a scan. Its rows live only in the persister's queued writes from
        here on, and are released as soon as they are stored (or kept, through a database
        outage, until they are); ``job.stored`` tells readers when storage has it all."""
        self.metrics.scan_finished(status)
        job.status = status
        job.error = error
        metrics = result.metrics if result is not None else None
        scan_uuid = uuid.UUID(job.scan_id)
        repository = self.repository

        universe_size = metrics.get("universe_size") if metrics else None

        async def record_end() -> None:
            await repository.transition(
                scan_uuid,
                status,
                error=error,
                metrics=_jsonable(metrics),
                universe_size=universe_size,
            )

        async def mark_stored() -> None:
            job.stored.set()

        if result is not None and status == "completed":
            rows, failures = result.rows, result.failures
            self.persister.submit(
                f"save results of {job.scan_id}",
                lambda: repository.save_results(scan_uuid, rows),
            )
            self.persister.submit(
                f"save failures of {job.scan_id}",
                lambda: repository.save_failures(scan_uuid, failures),
            )
        self.persister.submit(f"finish scan {job.scan_id}", record_end)
        accuracy = result.accuracy if result is not None else None
        if accuracy is not None and kind is not None and result is not None:
            self._remember_runs(job, result, kind)
            for checkpoint in accuracy.checkpoints:
                self.metrics.eta_checkpoint(checkpoint.checkpoint, checkpoint.error_pct)
            cache_hit_ratio = metrics.get("cache_hit_ratio") if metrics else None
            self.persister.submit(
                f"record ETA accuracy of {job.scan_id}",
                functools.partial(
                    repository.record_accuracy,
                    scan_uuid,
                    accuracy,
                    kind=kind,
                    cache_hit_ratio=cache_hit_ratio,
                ),
            )
        self.persister.submit(f"mark scan {job.scan_id} stored", mark_stored)
        self._finished[job.scan_id] = job
        while len(self._finished) > FINISHED_JOBS_KEPT:
            self._finished.popitem(last=False)
        job.done.set()

    async def _runner(self) -> None:
        while True:
            async with self._queue_ready:
                await self._queue_ready.wait_for(lambda: bool(self._queue))
            if not self._queue:
                continue
            job = self._queue.popleft()
            self._running[job.scan_id] = job
            try:
                await self._run(job)
            except Exception:
                log.exception("scan %s crashed the job manager", job.scan_id)
                if job.status not in TERMINAL_STATUSES:
                    self._finish(job, "failed", "internal error")
            finally:
                self._running.pop(job.scan_id, None)

    async def _run(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        kind = self._kind(job.config)
        priors = await self._priors(job.config, kind)
        scan_uuid = uuid.UUID(job.scan_id)
        self.persister.submit(
            f"start scan {job.scan_id}", lambda: self.repository.transition(scan_uuid, "running")
        )
        job.status = "running"

        def on_progress(snapshot: Snapshot) -> None:
            loop.call_soon_threadsafe(self._on_snapshot, job, snapshot)

        scan = functools.partial(
            run_scan,
            job.config,
            on_progress=on_progress,
            executor=self.pool,
            cancel=job.cancel,
            cache_dir=self.cache_dir,
            priors=priors,
            scan_id=job.scan_id,
            progress_interval_s=self.progress_interval_s,
            max_scan_cells=self.max_scan_cells,
            cache_max_bytes=self.cache_max_bytes,
            polygon=self.polygon,
        )
        started = time.monotonic()
        try:
            result = await loop.run_in_executor(self._threads, scan)
        except Exception as error:
            log.warning("scan %s failed: %s", job.scan_id, error)
            self._finish(job, "failed", str(error))
            return
        if self.cache_dir is not None:
            self.metrics.cache_lookup(hit=bool(result.metrics.get("cache_hit")))
        self._recent_durations_s.append(time.monotonic() - started)
        self._finish(job, result.status, None, result, kind=kind)

    def _kind(self, config: ScanConfig) -> str:
        rate_limit = self.polygon.client.requests_per_minute if self.polygon else None
        return scan_kind(config.provider, int(rate_limit) if rate_limit else None)

    async def _priors(self, config: ScanConfig, kind: str) -> dict[str, StagePrior]:
        """Priors learned from the kind's recent scans, those this server finished but has not
        stored yet first; the measured defaults alone when the database cannot say in time
        (a scan never waits long for its ETA's history)."""
        try:
            stored = await asyncio.wait_for(self.repository.eta_history(kind), PRIORS_TIMEOUT_S)
        except (StorageError, TimeoutError):
            stored = {}
        pending = self._unstored_runs.get(kind, deque())
        while pending and pending[0][0].stored.is_set():
            pending.popleft()
        history: dict[str, list[tuple[float, float, float | None]]] = {}
        for _, runs in reversed(pending):
            for stage, run in runs.items():
                history.setdefault(stage, []).append(run)
        for stage, runs in stored.items():
            history.setdefault(stage, []).extend(runs)
        return fit_priors(
            {stage: runs[:HISTORY_SCANS] for stage, runs in history.items()}, config.provider
        )

    def _remember_runs(self, job: Job, result: ScanResult, kind: str) -> None:
        runs: StageRuns = {
            stage: (detail["current"], detail["duration"], detail.get("tail"))
            for stage, detail in result.snapshot["stages"].items()
            if detail["status"] == "completed" and detail["duration"] is not None
        }
        self._unstored_runs.setdefault(kind, deque(maxlen=HISTORY_SCANS)).append((job, runs))

    def _on_snapshot(self, job: Job, snapshot: Snapshot) -> None:
        self.hub.publish(job.scan_id, snapshot)
        scan_uuid = uuid.UUID(job.scan_id)
        for stage, detail in snapshot["stages"].items():
            status = detail["status"]
            before = job.stage_status.get(stage, "pending")
            if status == before:
                continue
            job.stage_status[stage] = status
            total = int(detail["total"]) if detail["total"] is not None else None
            if before == "pending" and status != "pending":
                started_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=detail["duration"] or 0)
                self.persister.submit(
                    f"start stage {stage}",
                    functools.partial(
                        self.repository.start_stage,
                        scan_uuid,
                        stage,
                        units_total=total,
                        started_at=started_at,
                    ),
                )
            if stage == "universe_loading" and status == "completed":
                selected = snapshot["stages"]["data_fetching"]["total"]
                if selected is not None:
                    self.persister.submit(
                        f"record universe size of {job.scan_id}",
                        functools.partial(
                            self.repository.update_scan, scan_uuid, universe_size=int(selected)
                        ),
                    )
            if status == "completed" and detail["duration"] is not None:
                self.metrics.stage_completed(stage, detail["duration"])
            if status in STAGE_END_STATUSES:
                self.persister.submit(
                    f"finish stage {stage}",
                    functools.partial(
                        self.repository.finish_stage,
                        scan_uuid,
                        stage,
                        status=status,
                        units_done=int(detail["current"]),
                        units_total=total,
                        duration_s=detail["duration"],
                        tail_s=detail.get("tail"),
                    ),
                )


def _jsonable(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {key: value for key, value in metrics.items() if value is not None}
