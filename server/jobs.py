"""The job manager: queues scans, runs them on the shared worker pool, reports and records.

At most ``max_concurrent_scans`` run at once; the rest wait in FIFO order, up to
``max_queued_scans`` (then ``QueueFull``, which the HTTP layer answers with 429 and
Retry-After). Each scan's orchestrator (``engine.run_scan``) runs in a thread; its progress
callback hops onto the event loop with ``call_soon_threadsafe`` and is published to the hub
as it happens — nothing polls. Stage starts and ends, results and the final state go to
the ``Persister``, which keeps them through a database outage.

In a fleet (``fleet=True``: ``REDIS_URL`` set, several instances on one database) the queue
is the database's, not this process's. ``submit`` stores the scan pending and unowned before
answering (``Repository.enqueue_scan``, which also applies the fleet's limit), and NOTIFYs;
every instance's claimer claims the oldest pending scan whenever it has a free slot (woken
by LISTEN through ``on_notify``, and polling every ``poll_s`` in case a notification was
lost), then runs it as a local scan. A cancel for a scan this process does not run goes to
the database (``cancel_elsewhere``); the owner hears it by NOTIFY or at its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from technic.engine.errors import InvalidConfig
from technic.engine.eta import HISTORY_SCANS, StagePrior, fit_priors, scan_kind
from technic.engine.polygon.source import PolygonSource
from technic.engine.progress import STAGE_END_STATUSES, TERMINAL_STATUSES, Snapshot
from technic.engine.workers import WorkerPool
from technic.server.hub import Hub
from technic.server.persist import Persister
from technic.storage import (
    CANCEL_CHANNEL,
    QUEUE_CHANNEL,
    CancelOutcome,
    Repository,
    Scan,
    StorageError,
)

if TYPE_CHECKING:
    from technic.server.metrics import Metrics

log = logging.getLogger(__name__)

FINISHED_JOBS_KEPT = 256
# How many recent scan durations the Retry-After estimate averages.
RECENT_DURATIONS_KEPT = 20
PRIORS_TIMEOUT_S = 2.0
# how often a fleet instance looks at the queue and its cancel requests without a NOTIFY
FLEET_POLL_S = 1.0
# how often a synchronous start looks whether a scan running elsewhere has finished
FLEET_WAIT_POLL_S = 0.2


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
        fleet: bool = False,
        owner_timeout_s: float = 30.0,
        poll_s: float = FLEET_POLL_S,
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
        self.fleet = fleet
        # an instance whose heartbeat is older than this is dead (the fleet's limit counts
        # the live ones)
        self.owner_timeout_s = owner_timeout_s
        self.poll_s = poll_s
        self.accepting = True
        self._wake = asyncio.Event()
        self._claimer: asyncio.Task[None] | None = None
        self._claimed: set[asyncio.Task[None]] = set()
        self._recent_durations_s: deque[float] = deque(maxlen=RECENT_DURATIONS_KEPT)
        # per kind, the stage runs of scans this server finished that storage does not have
        # yet (saving 100,000 rows takes a second or two): the next scan learns from them too
        self._unstored_runs: dict[str, deque[tuple[Job, StageRuns]]] = {}
        # fleet slots promised to scans being stored right now, so the claimer does not
        # fill them meanwhile
        self._reserved_slots = 0
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
        if self.fleet:
            self._claimer = asyncio.create_task(self._claim_loop(), name="scan-claimer")
            return
        self._runners = [
            asyncio.create_task(self._runner(), name=f"scan-runner-{i}")
            for i in range(self.max_concurrent_scans)
        ]

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop taking scans, cancel queued and running ones, wait for them to be recorded."""
        self.accepting = False
        if self._claimer is not None:
            self._claimer.cancel()
            await asyncio.gather(self._claimer, return_exceptions=True)
        while self._queue:
            self._cancel_queued(self._queue.popleft())
        running = list(self._running.values())
        for job in running:
            job.cancel.set()
        if running:
            waits = [asyncio.create_task(job.done.wait()) for job in running]
            await asyncio.wait(waits, timeout=timeout_s)
        for task in [*self._runners, *self._claimed]:
            task.cancel()
        await asyncio.gather(*self._runners, *self._claimed, return_exceptions=True)
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

    async def submit(self, config: ScanConfig) -> str:
        """Queue a scan; its id. In a fleet it is stored before this returns, so any
        instance can claim it at once."""
        if not self.accepting:
            raise NotAccepting("the server is shutting down")
        if self.fleet:
            return await self._enqueue(config)
        busy = len(self._running) >= self.max_concurrent_scans
        if busy and len(self._queue) >= self.max_queued_scans:
            raise QueueFull(self._retry_after_s(len(self._queue), self.max_concurrent_scans))
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
        return job.scan_id

    async def wait_finished(self, scan_id: str, timeout_s: float) -> bool:
        """Wait for a scan to end wherever it runs; False if ``timeout_s`` passed first.

        A scan of this process: its ``done`` event. In a fleet the scan may run elsewhere:
        the database's record, whose terminal state is written after its results.
        """
        job = self.get(scan_id)
        if not self.fleet and job is not None:
            try:
                await asyncio.wait_for(job.done.wait(), timeout_s)
            except TimeoutError:
                return False
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            scan = await self.repository.get_scan(scan_id)
            if scan is None or scan.status in TERMINAL_STATUSES:
                return True
            await asyncio.sleep(FLEET_WAIT_POLL_S)
        return False

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

    async def cancel_elsewhere(self, scan_id: str) -> tuple[Scan, CancelOutcome] | None:
        """Cancel a fleet scan this process does not run: an unclaimed one at once (its final
        state published here and stored), another instance's by asking its owner."""
        answer = await self.repository.request_cancel(scan_id)
        if answer is not None and answer[1] == "cancelled":
            self.metrics.scan_finished("cancelled")
            self._publish_cancelled(scan_id)
        return answer

    def on_notify(self, channel: str, payload: str) -> None:
        """A NOTIFY from the fleet (storage ``Listener``): a scan to claim, or to stop."""
        if channel == QUEUE_CHANNEL:
            self._wake.set()
        elif channel == CANCEL_CHANNEL and (job := self._running.get(payload)) is not None:
            job.cancel.set()

    def wake(self) -> None:
        """Look at the fleet queue now (e.g. LISTEN is back: notifications were missed)."""
        self._wake.set()

    # -- internals ------------------------------------------------------------------------

    def _retry_after_s(self, queued: int, slots: int) -> int:
        """Seconds until ``queued`` scans ahead have run on ``slots`` slots, at the mean
        duration of this server's recent scans."""
        durations = self._recent_durations_s or (10.0,)
        mean_s = sum(durations) / len(durations)
        return max(1, int(mean_s * (queued + 1) / slots))

    async def _enqueue(self, config: ScanConfig) -> str:
        """Store the scan in the fleet's queue; run it here at once when this instance has a
        free slot and nothing older waits (the watchers of a scan tend to ask where they
        started it), else let the fleet's first free slot claim it."""
        scan_id = str(uuid.uuid4())
        free = self.accepting and self._busy_slots() < self.max_concurrent_scans
        if free:
            self._reserved_slots += 1
        try:
            admission = await self.repository.enqueue_scan(
                uuid.UUID(scan_id),
                config.to_dict(),
                slots_per_instance=self.max_concurrent_scans + self.max_queued_scans,
                live_within_s=self.owner_timeout_s,
                claim_for=self.owner if free and self.owner else None,
            )
        finally:
            if free:
                self._reserved_slots -= 1
        if not admission.accepted:
            slots = self.max_concurrent_scans * admission.instances
            raise QueueFull(self._retry_after_s(max(0, admission.active - slots), slots))
        if admission.claimed:
            self._run_claimed(scan_id, config.to_dict())
        else:
            self._wake.set()
        return scan_id

    def _busy_slots(self) -> int:
        return len(self._running) + self._reserved_slots

    def _publish_cancelled(self, scan_id: str) -> None:
        tracker = MultiStageProgressTracker(scan_id=scan_id)
        tracker.finish("cancelled", "Scan cancelled before it started")
        self.hub.publish(scan_id, tracker.snapshot())

    def _cancel_queued(self, job: Job) -> None:
        self._publish_cancelled(job.scan_id)
        self._finish(job, "cancelled", None)

    async def _claim_loop(self) -> None:
        """Claim fleet scans while this process has free slots; stop the ones asked to."""
        failing = False
        while True:
            self._wake.clear()
            try:
                await self._claim_free_slots()
                if self._running:
                    for scan_uuid in await self.repository.cancel_requests(self.owner or ""):
                        if (job := self._running.get(str(scan_uuid))) is not None:
                            job.cancel.set()
            except StorageError as error:
                if not failing:
                    log.warning("cannot look at the fleet queue: %s", error)
                failing = True
            else:
                failing = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def _claim_free_slots(self) -> None:
        while self.accepting and self._busy_slots() < self.max_concurrent_scans:
            scan = await self.repository.claim_scan(self.owner or "")
            if scan is None:
                return
            self._run_claimed(str(scan.id), scan.config)

    def _run_claimed(self, scan_id: str, stored_config: dict[str, Any]) -> None:
        """Run a scan this instance owns in the fleet's queue."""
        try:
            config = ScanConfig.from_dict(stored_config)
        except InvalidConfig as error:  # stored by an instance of another version
            self._finish(Job(scan_id, ScanConfig()), "failed", f"unusable config: {error}")
            return
        job = Job(scan_id=scan_id, config=config)
        self._running[scan_id] = job
        task = asyncio.create_task(self._execute(job), name=f"scan-{scan_id}")
        self._claimed.add(task)
        task.add_done_callback(self._claimed.discard)

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
            await self._execute(job)

    async def _execute(self, job: Job) -> None:
        """Run a job this process holds a slot for, and free the slot after."""
        try:
            await self._run(job)
        except Exception:
            log.exception("scan %s crashed the job manager", job.scan_id)
            if job.status not in TERMINAL_STATUSES:
                self._finish(job, "failed", "internal error")
        finally:
            self._running.pop(job.scan_id, None)
            self._wake.set()

    async def _run(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        kind = self._kind(job.config)
        priors = await self._priors(job.config, kind)
        scan_uuid = uuid.UUID(job.scan_id)
        if self.fleet:
            # directly: a claim is only ours while the database says so (cancelled or
            # released meanwhile, it is not run)
            if not await self.repository.start_claimed(scan_uuid, self.owner or ""):
                scan = await self.repository.get_scan(scan_uuid)
                if scan is not None and scan.owner == self.owner and scan.status == "pending":
                    self._cancel_queued(job)  # asked to cancel between its claim and start
                else:
                    log.info("scan %s was taken back before it started", job.scan_id)
                return
        else:
            self.persister.submit(
                f"start scan {job.scan_id}",
                lambda: self.repository.transition(scan_uuid, "running"),
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
