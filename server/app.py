"""The aiohttp application: routes of the seed's contract, access control, lifecycle.

``create_app(settings)`` builds everything the service holds (database, hub, worker pool,
job manager) in a ``cleanup_ctx``, so tests and ``technic serve`` start and stop it the
same way. Handlers validate input with ``server.requests`` before awaiting anything and
raise ``RequestError``; ``error_middleware`` is the one place that turns errors into the
JSON ``{"error": ..., "field": ...}`` responses (``server.errors``). No finance logic lives
here.

Cross-site requests (``access_middleware``). With no token set, the service would act on
any request that reaches it, including one a web page on another site makes the operator's
browser send. So: a state-changing request (any method but GET, HEAD, OPTIONS) that
carries a body must say ``Content-Type: application/json`` (a cross-site page can only
send ``text/plain``, form or multipart bodies without asking first, and we never answer
CORS preflights); a state-changing request and a WebSocket handshake that carry an
``Origin`` must come from the page this server serves or from ``TECHNIC_ALLOWED_ORIGINS``
(no ``Origin``, as from curl or the CLI, is fine: browsers send one on every such request
from a page); and the ``Host`` header must name
this server (``TECHNIC_ALLOWED_HOSTS``), or a page on a domain the attacker re-points at
127.0.0.1 (DNS rebinding) would be "same origin" and could read everything.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web
from technic.config import Settings
from technic.engine.errors import DataError, InvalidConfig
from technic.engine.polygon.source import MISSING_KEY_MESSAGE, source_from_settings
from technic.engine.progress import TERMINAL_STATUSES
from technic.engine.scan import select_symbols
from technic.engine.scan_config import ScanConfig
from technic.engine.workers import WorkerPool
from technic.server import openapi, streams, universe_routes
from technic.server.bus import RedisBus
from technic.server.errors import (
    describe_protocol_error,
    error_response,
    json_response,
    request_context,
)
from technic.server.hub import Hub
from technic.server.jobs import JobManager, NotAccepting, QueueFull
from technic.server.metrics import Metrics
from technic.server.ownership import Ownership
from technic.server.persist import Persister
from technic.server.requests import (
    RequestError,
    ResultsQuery,
    parse_cursor,
    parse_int,
    parse_results_query,
    parse_start,
)
from technic.server.retention import prune_forever
from technic.server.streams import StreamStats
from technic.server.views import (
    accuracy_json,
    performance_metrics,
    progress_from_record,
    results_csv,
    scan_summary,
    stats_json,
    trend_json,
)
from technic.storage import (
    CANCEL_CHANNEL,
    MAX_PAGE_SIZE,
    QUEUE_CHANNEL,
    Database,
    DatabaseUnavailable,
    InvalidInput,
    Listener,
    Scan,
    SizeBucket,
    StorageError,
    connect,
)
from technic.storage.retention import Retention, RetentionPolicy
from technic.storage.windows import parse_window

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
DATABASE = web.AppKey("database", Database)
HUB = web.AppKey("hub", Hub)
BUS = web.AppKey("bus", RedisBus)  # only in fleet mode (REDIS_URL set)
JOBS = web.AppKey("jobs", JobManager)
PERSISTER = web.AppKey("persister", Persister)
POOL = web.AppKey("pool", WorkerPool)
METRICS = web.AppKey("metrics", Metrics)
STREAM_STATS = web.AppKey("stream_stats", StreamStats)
OPENAPI = web.AppKey("openapi", bytes)

MAX_BODY_BYTES = 64 * 1024
STATIC_DIR = Path(__file__).parent / "static"
# The page's own files, listed once: a request names one of them or gets a JSON 404, and no
# part of a URL ever becomes a file-system path.
STATIC_FILES = frozenset(
    path.name
    for path in (STATIC_DIR.iterdir() if STATIC_DIR.is_dir() else ())
    if path.suffix in {".html", ".css", ".js", ".svg"}
)
PUBLIC_PATHS = frozenset({"/health", "/", "/favicon.ico", "/openapi.json"})
# how long a results request waits for a just-finished scan's writes, and then the advice
RESULTS_STORE_WAIT_S = 10.0
RESULTS_RETRY_AFTER_S = 2
# how long a synchronous start (async_mode false) waits for its scan; after that it answers
# like an asynchronous one (202 and where to follow the scan)
SYNC_WAIT_S = 3600.0
# a mirrored scan silent this long is looked up in the database (``_settle_mirrors``)
MIRROR_STALE_S = 5.0
MIRROR_CHECK_S = 2.0

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def version() -> str:
    try:
        return metadata.version("technic")
    except metadata.PackageNotFoundError:
        return "0+unknown"


# -- middlewares -------------------------------------------------------------------------


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost, so it times what the client gets, error answers included. A WebSocket or
    SSE stream lasts as long as its scan: it is counted as a watcher, not timed."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as error:  # a redirect or other non-error the boundary re-raises
        response = error
    else:
        if isinstance(response, web.WebSocketResponse) or (
            response.content_type == "text/event-stream"
        ):
            return response
    resource = request.match_info.route.resource
    request.app[METRICS].observe_request(
        resource.canonical if resource is not None else "unmatched",
        request.method,
        response.status,
        time.perf_counter() - started,
    )
    if isinstance(response, web.HTTPException):
        raise response
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    context = request_context(request)
    try:
        return await handler(request)
    except RequestError as error:
        headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s else None
        return error_response(
            error.status,
            error.message,
            error.field,
            context=context,
            headers=headers,
            extra=error.extra,
        )
    except web.HTTPRequestEntityTooLarge:
        return error_response(
            413, f"request body is larger than {MAX_BODY_BYTES} bytes", context=context
        )
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return error_response(error.status, error.reason, context=context)
    except web.RequestPayloadError as error:  # e.g. a gzip Content-Encoding on a plain body
        return error_response(400, *describe_protocol_error(error), context=context)
    except InvalidInput as error:
        return error_response(400, error.message, error.field, context=context)
    except DatabaseUnavailable as error:
        return error_response(503, f"database unavailable: {error}", context=context)
    except Exception as error:
        if isinstance(error, ConnectionResetError) and request.transport is None:
            # The client left while we read its body: nobody to answer, nothing to report.
            log.debug("client left during %s", context)
            return json_response({"error": "client disconnected", "field": None}, 400)
        log.exception("unhandled error on %s", context)
        return json_response({"error": "internal server error", "field": None}, 500)


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host, Origin and Content-Type checks against cross-site requests (module docstring)."""
    settings = request.app[SETTINGS]
    _check_host(request.headers.get(hdrs.HOST), settings.allowed_hosts)
    websocket = request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
    if request.method not in SAFE_METHODS or websocket:
        _check_origin(request)
    changes_state = request.method not in SAFE_METHODS
    if changes_state and request.body_exists and request.content_type != "application/json":
        raise RequestError(
            f"Content-Type must be application/json, got {request.content_type}",
            status=415,
            field="Content-Type",
        )
    return await handler(request)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[SETTINGS].api_token
    if token is None or request.path in PUBLIC_PATHS or request.path.startswith("/static/"):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    if not header.isascii():
        raise RequestError("the Authorization header must be ASCII", field="Authorization")
    given = header[7:] if header.startswith("Bearer ") else None
    streaming = request.path.startswith(("/scan/ws/", "/scan/stream/"))
    if given is None and streaming:
        given = request.query.get("token")
        if given is not None and not given.isascii():
            raise RequestError("the token must be ASCII", field="token")
    if given is None:
        raise RequestError("missing bearer token", status=401, field="Authorization")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise RequestError("wrong bearer token", status=401, field="Authorization")
    return await handler(request)


# -- helpers -----------------------------------------------------------------------------


def _scan_id(request: web.Request) -> str:
    raw = request.match_info["scan_id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise RequestError(f"no scan {raw!r}", status=404, field="scan_id") from None


def _check_host(host: str | None, allowed_hosts: tuple[str, ...]) -> None:
    """The Host header names this server (any port), or the request is refused."""
    if host is None or "*" in allowed_hosts:
        return  # no Host (HTTP/1.0): not a browser, which is what the check is about
    name = host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]
    if name.lower() not in allowed_hosts:
        raise RequestError(
            f"Host {host} is not one this server answers to; set TECHNIC_ALLOWED_HOSTS",
            field="Host",
        )


def _check_origin(request: web.Request) -> None:
    """No Origin (curl, the CLI), the page this server serves, or the allowlist."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None or origin == f"{request.scheme}://{request.host}":
        return
    allowed = request.app[SETTINGS].allowed_origins
    if origin in allowed or "*" in allowed:
        return
    raise RequestError(f"origin {origin} is not allowed", status=403, field="Origin")


def _check_connections(request: web.Request) -> None:
    stats = request.app[STREAM_STATS]
    open_streams = stats.open_websockets + stats.open_sse
    if open_streams >= request.app[SETTINGS].max_connections:
        raise RequestError("too many open watchers; try again later", status=503)


def _validate_universe(config: ScanConfig, max_scan_cells: int) -> None:
    """Unknown sectors and industries, and a scan beyond MAX_SCAN_CELLS, are a 400 now,
    not a failed scan later. The market universe is the provider's list, fetched by the
    scan (in requests, with their progress): the scan checks that one."""
    if config.universe == "market":
        return
    try:
        select_symbols(config, max_scan_cells=max_scan_cells)
    except InvalidConfig as error:
        raise RequestError(error.message, field=error.field) from None
    except DataError as error:
        raise RequestError(str(error), field="provider") from None


def _start_response(scan_id: str) -> dict[str, Any]:
    return {
        "scan_id": scan_id,
        "status": "pending",
        "message": "Scan started with multi-stage progress tracking",
        "progress_url": f"/scan/progress/{scan_id}",
        "websocket_url": f"/scan/ws/{scan_id}",
        "sse_url": f"/scan/stream/{scan_id}",
    }


# -- handlers ----------------------------------------------------------------------------


async def start_scan(request: web.Request) -> web.Response:
    body = await request.read()
    settings = request.app[SETTINGS]
    start = parse_start(body, max_symbols_cap=settings.max_symbols_cap)
    jobs = request.app[JOBS]
    if start.config.provider == "polygon" and jobs.polygon is None:
        raise RequestError(MISSING_KEY_MESSAGE, field="provider")
    await asyncio.to_thread(_validate_universe, start.config, settings.max_scan_cells)
    try:
        scan_id = await jobs.submit(start.config)
    except QueueFull as error:
        raise RequestError(str(error), status=429, retry_after_s=error.retry_after_s) from None
    except NotAccepting as error:
        raise RequestError(str(error), status=503) from None
    if start.async_mode or not await jobs.wait_finished(scan_id, SYNC_WAIT_S):
        return json_response(_start_response(scan_id), status=202)
    first_page = parse_results_query({})
    return json_response(await _results_body(request, scan_id, first_page))


async def scan_progress(request: web.Request) -> web.Response:
    scan_id = _scan_id(request)
    latest = request.app[HUB].latest_message(scan_id)
    if latest is not None:
        return _json_bytes(latest.data)
    bus = request.app.get(BUS)
    if bus is not None and (envelope := await bus.latest(scan_id)) is not None:
        return _json_bytes(envelope.data)  # another instance's scan, as its owner sent it
    scan = await request.app[DATABASE].repository.get_scan(scan_id)
    if scan is None:
        raise RequestError(f"no scan {scan_id}", status=404, field="scan_id")
    return json_response(progress_from_record(scan))


async def _finished_scan(request: web.Request, scan_id: str) -> Scan:
    """The stored record of a finished scan whose results are all in storage.

    Results are read from storage only, whichever process ran the scan and whenever: one
    implementation of sorting and paging (the repository's SQL). A scan this process has
    just finished may still have writes queued; wait for them a little, then say so (503)
    rather than answer from memory.
    """
    jobs = request.app[JOBS]
    job = jobs.get(scan_id)
    if job is not None and not job.stored.is_set():
        latest = request.app[HUB].latest(scan_id) or {}
        status = job.status if job.status in TERMINAL_STATUSES else latest.get("status")
        if status not in TERMINAL_STATUSES:
            raise _not_finished(job.status)
        healthy = request.app[PERSISTER].healthy
        if not await jobs.wait_stored(job, RESULTS_STORE_WAIT_S if healthy else 0):
            reason = "the database is unavailable" if not healthy else "storing takes a while"
            raise RequestError(
                f"scan is {status}; its results are being stored ({reason}): retry shortly",
                status=503,
                field="scan_id",
                retry_after_s=RESULTS_RETRY_AFTER_S,
                extra={"status": status},
            )
    scan = await request.app[DATABASE].repository.get_scan(scan_id)
    if scan is None:
        raise RequestError(f"no scan {scan_id}", status=404, field="scan_id")
    if scan.status not in TERMINAL_STATUSES:
        raise _not_finished(scan.status)
    if scan.results_pruned_at is not None:
        raise _pruned(scan, scan.results_pruned_at, request.app[SETTINGS].results_retention_days)
    return scan


def _pruned(scan: Scan, pruned_at: dt.datetime, retention_days: int) -> RequestError:
    policy = "0, keep forever" if not retention_days else f"{retention_days} days"
    finished = f" finished on {scan.finished_at:%Y-%m-%d %H:%M} UTC;" if scan.finished_at else ""
    return RequestError(
        f"the results of scan {scan.id} were pruned on {pruned_at:%Y-%m-%d %H:%M} UTC by"
        f" retention (RESULTS_RETENTION_DAYS, now {policy}): the scan{finished} its record"
        " and stage timings are kept",
        status=410,
        field="scan_id",
        extra={"status": scan.status, "results_pruned_at": pruned_at.isoformat()},
    )


def _not_finished(status: str) -> RequestError:
    return RequestError(
        f"scan is {status}; results are ready when it completes",
        status=409,
        field="scan_id",
        extra={"status": status},
    )


async def _results_body(request: web.Request, scan_id: str, query: ResultsQuery) -> dict[str, Any]:
    scan = await _finished_scan(request, scan_id)
    repository = request.app[DATABASE].repository
    page = await repository.fetch_results(
        scan_id,
        sort=query.sort,
        descending=query.descending,
        limit=query.limit or MAX_PAGE_SIZE,
        offset=query.offset,
    )
    failures = await repository.fetch_failures(scan_id) or []
    metrics = scan.metrics or {}
    return {
        "scan_id": scan_id,
        "status": scan.status,
        "results": page.rows if page else [],
        "count": len(page.rows) if page else 0,
        "total": page.total if page else 0,
        "performance_metrics": performance_metrics(metrics),
        "stage_timings": metrics.get("stage_timings")
        or {t.stage: t.duration_s for t in scan.stages if t.duration_s is not None},
        "failures": [{"symbol": f.symbol, "reason": f.reason} for f in failures],
    }


async def _results_csv(
    request: web.Request, scan_id: str, query: ResultsQuery
) -> web.StreamResponse:
    """Every asked-for row of a stored scan, streamed as CSV a batch at a time."""
    await _finished_scan(request, scan_id)
    export = await request.app[DATABASE].repository.export_results(
        scan_id,
        sort=query.sort,
        descending=query.descending,
        offset=query.offset,
        limit=query.limit,
    )
    if export is None:
        raise RequestError(f"no scan {scan_id}", status=404, field="scan_id")
    response = web.StreamResponse(
        headers={"Content-Disposition": f'attachment; filename="technic-{scan_id}.csv"'}
    )
    response.content_type = "text/csv"
    response.charset = "utf-8"
    response.enable_chunked_encoding()
    await response.prepare(request)
    # From here on the status is sent: a failure can only cut the body short, which the
    # client sees as an incomplete chunked response rather than a file that looks whole.
    try:
        await response.write(results_csv((), header=True).encode())
        async for batch in export.batches():
            # formatting ~2000 rows takes ~0.1 s of CPU: off the loop, so streams keep flowing
            text = await asyncio.to_thread(results_csv, batch, header=False)
            await response.write(text.encode())
    except ConnectionError:
        log.info("CSV export of %s: the client went away", scan_id)
        return response
    except StorageError as error:
        log.warning("CSV export of %s cut short: %s", scan_id, error)
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


async def scan_results(request: web.Request) -> web.StreamResponse:
    scan_id = _scan_id(request)
    query = parse_results_query(request.query)
    if query.output == "csv":
        return await _results_csv(request, scan_id, query)
    return json_response(await _results_body(request, scan_id, query))


async def scan_ws(request: web.Request) -> web.StreamResponse:
    scan_id = _scan_id(request)
    since = parse_cursor(request.query.get("since"), "since")
    await _ensure_topic(request, scan_id)
    _check_connections(request)
    return await streams.websocket_stream(
        request, request.app[HUB], scan_id, since, stats=request.app[STREAM_STATS]
    )


async def scan_sse(request: web.Request) -> web.StreamResponse:
    scan_id = _scan_id(request)
    header = request.headers.get("Last-Event-ID")
    last_event_id = (
        parse_cursor(header, "Last-Event-ID")
        if header
        else parse_cursor(request.query.get("last_event_id"), "last_event_id")
    )
    await _ensure_topic(request, scan_id)
    _check_connections(request)
    events = request.query.get("events", "default")
    if events not in ("default", "named"):
        raise RequestError("must be default or named", field="events")
    return await streams.sse_stream(
        request,
        request.app[HUB],
        scan_id,
        last_event_id,
        named_events=events == "named",
        stats=request.app[STREAM_STATS],
    )


async def _ensure_topic(request: web.Request, scan_id: str) -> None:
    """Give the hub the scan's topic to stream, or answer 404 if no one knows the scan.

    Another instance's scan is mirrored from Redis (fleet mode). A scan known only to the
    database (finished before a restart, or its owner unreachable through Redis) gets its
    stored state, as a mirror: the owner's stream replaces it as soon as it is heard.
    """
    hub = request.app[HUB]
    if hub.latest(scan_id) is not None:
        return
    bus = request.app.get(BUS)
    if bus is not None and await bus.mirror(scan_id):
        return
    scan = await request.app[DATABASE].repository.get_scan(scan_id)
    if scan is not None:
        snapshot = progress_from_record(scan)
        snapshot["seq"] = 1
        hub.publish(scan_id, snapshot, mirror=True)
    elif request.app[JOBS].get(scan_id) is None and hub.latest(scan_id) is None:
        raise RequestError(f"no scan {scan_id}", status=404, field="scan_id")


async def cancel_scan(request: web.Request) -> web.Response:
    scan_id = _scan_id(request)
    jobs = request.app[JOBS]
    job = jobs.cancel(scan_id)
    if job is not None:
        message = "Cancellation requested" if job.status == "running" else f"Scan {job.status}"
        return json_response({"scan_id": scan_id, "status": job.status, "message": message})
    if jobs.fleet:
        answer = await jobs.cancel_elsewhere(scan_id)
        if answer is None:
            raise RequestError(f"no scan {scan_id}", status=404, field="scan_id")
        scan, outcome = answer
        message = {
            "cancelled": "Scan cancelled",
            "requested": "Cancellation requested",
            "finished": "Scan already finished",
        }[outcome]
        return json_response({"scan_id": scan_id, "status": scan.status, "message": message})
    scan = await request.app[DATABASE].repository.get_scan(scan_id)
    if scan is None:
        raise RequestError(f"no scan {scan_id}", status=404, field="scan_id")
    return json_response(
        {"scan_id": scan_id, "status": scan.status, "message": "Scan already finished"}
    )


def _json_bytes(data: bytes) -> web.Response:
    """A snapshot's JSON as the hub (or its owner) serialised it, not encoded again."""
    return web.Response(body=data, content_type="application/json")


def _active_summary(
    request: web.Request,
    scan_id: str,
    status: str,
    instance: str | None,
    created_at: dt.datetime,
    config: dict[str, Any],
    stored: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One scan of /scan/active: its progress from the newest snapshot this process has,
    else from the stored record (``stored``, a scan running elsewhere)."""
    latest = request.app[HUB].latest(scan_id) or stored or {}
    return {
        "scan_id": scan_id,
        "status": status,
        "instance": instance,
        "created_at": created_at.isoformat(),
        "overall_progress": latest.get("overall_progress", 0.0),
        "time_progress": latest.get("time_progress", 0.0),
        "current_stage": latest.get("current_stage"),
        "overall_eta_formatted": latest.get("overall_eta_formatted"),
        "config": config,
    }


async def active_scans(request: web.Request) -> web.Response:
    """This process's running and queued scans; in a fleet, the whole fleet's (from the
    database), each with the instance that runs it (none yet for a queued one)."""
    jobs = request.app[JOBS]
    if jobs.fleet:
        active = []
        for scan in await request.app[DATABASE].repository.active_scans():
            job = jobs.get(str(scan.id))
            status = job.status if job is not None else scan.status
            active.append(
                _active_summary(
                    request,
                    str(scan.id),
                    status,
                    scan.owner,
                    scan.created_at,
                    scan.config,
                    progress_from_record(scan),
                )
            )
    else:
        active = [
            _active_summary(
                request,
                job.scan_id,
                job.status,
                jobs.owner,
                dt.datetime.fromtimestamp(job.created_at, dt.UTC),
                job.config.to_dict(),
            )
            for job in [*jobs.running, *jobs.queued]
        ]
    running = sum(1 for summary in active if summary["status"] == "running")
    return json_response({"active": active, "running": running, "queued": len(active) - running})


async def list_scans(request: web.Request) -> web.Response:
    query = request.query
    limit = parse_int(query, "limit", 50, 1, 500)
    status = query.get("status") or None
    now = dt.datetime.now(dt.UTC)
    since = now - parse_window(query["since"]) if query.get("since") else None
    until = now - parse_window(query["until"], field="until") if query.get("until") else None
    page = await request.app[DATABASE].repository.list_scans(
        status=status, since=since, until=until, limit=limit, cursor=query.get("cursor") or None
    )
    return json_response(
        {"scans": [scan_summary(scan) for scan in page.scans], "next_cursor": page.next_cursor}
    )


async def stage_stats(request: web.Request) -> web.Response:
    window = parse_window(request.query.get("since") or "7d")
    by_bucket = request.query.get("by_bucket", "false").lower()
    if by_bucket not in ("true", "false", "1", "0"):
        raise RequestError("must be true or false", field="by_bucket")
    stats = await request.app[DATABASE].repository.stage_stats(
        since=dt.datetime.now(dt.UTC) - window, by_bucket=by_bucket in ("true", "1")
    )
    return json_response(stats_json(stats))


async def accuracy_stats(request: web.Request) -> web.Response:
    query = request.query
    now = dt.datetime.now(dt.UTC)
    since = now - parse_window(query.get("since") or "7d")
    until = now - parse_window(query["until"], field="until") if query.get("until") else now
    bucket = _bucket(query)
    stats = await request.app[DATABASE].repository.accuracy_stats(
        since, until, provider=query.get("provider") or None, bucket=bucket
    )
    return json_response(accuracy_json(stats))


async def stage_trend(request: web.Request) -> web.Response:
    query = request.query
    bucket = _bucket(query)
    trend = await request.app[DATABASE].repository.stage_trend(
        since=dt.datetime.now(dt.UTC) - parse_window(query.get("since") or "30d"),
        interval=query.get("interval") or "1d",  # type: ignore[arg-type]  # checked there
        stage=query.get("stage") or None,  # type: ignore[arg-type]
        provider=query.get("provider") or None,
        bucket=bucket,
    )
    return json_response(trend_json(trend, bucket))


def _bucket(query: Mapping[str, str]) -> SizeBucket | None:
    if not query.get("bucket"):
        return None
    try:
        return SizeBucket.parse(query["bucket"])
    except ValueError as error:
        raise RequestError(str(error), field="bucket") from error


async def health(request: web.Request) -> web.Response:
    app = request.app
    database_ok = app[PERSISTER].healthy
    if database_ok:
        try:
            await app[DATABASE].ping()
        except StorageError:
            database_ok = False
    jobs = app[JOBS]
    bus = app.get(BUS)
    redis_ok = bus is None or bus.available
    fleet = {} if bus is None else {"redis": "ok" if redis_ok else "unavailable"}
    return json_response(
        {
            "status": "ok" if database_ok and redis_ok else "degraded",
            "database": "ok" if database_ok else "unavailable",
            **fleet,
            "database_backlog": app[PERSISTER].backlog,
            "workers": app[SETTINGS].max_workers,
            "active_scans": len(jobs.running),
            "queued_scans": len(jobs.queued),
            "accepting_scans": jobs.accepting,
            "version": version(),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].exposition(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise web.HTTPNotFound(reason="the page is not installed")
    return web.FileResponse(page)


async def favicon(request: web.Request) -> web.StreamResponse:
    """Browsers ask for /favicon.ico on pages that name no icon (/openapi.json, /metrics)."""
    return web.FileResponse(STATIC_DIR / "favicon.svg")


async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise RequestError(f"no file {name!r}", status=404, field="name")
    return web.FileResponse(STATIC_DIR / name)


# -- the application ----------------------------------------------------------------------


async def _progress_plane(app: web.Application) -> AsyncIterator[None]:
    """The hub, and in fleet mode the Redis bus that shares it with the other instances.

    First in the lifecycle, so an unreachable Redis stops the start before anything else
    (``RedisUnavailable``: one line and exit 1 from ``technic serve``), and last out, so
    the final states of scans stopped by the shutdown are still written to Redis.
    """
    url = app[SETTINGS].redis_url
    bus = RedisBus(url) if url is not None else None
    hub = Hub(on_publish=bus.publish if bus is not None else None)
    if bus is not None:
        await bus.start(hub)
        app[BUS] = bus
        app[METRICS].attach_bus(bus)
    app[HUB] = hub
    try:
        yield
    finally:
        hub.shutdown()
        if bus is not None:
            await bus.stop()


async def _services(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    database = await connect(settings)
    ownership = Ownership(
        database.repository,
        heartbeat_s=settings.owner_heartbeat_s,
        timeout_s=settings.owner_timeout_s,
        on_interrupted=functools.partial(app[METRICS].scan_finished, "interrupted"),
    )
    await ownership.start()
    hub = app[HUB]
    persister = Persister()
    persister.start()
    pool = WorkerPool(settings.max_workers)
    jobs = JobManager(
        repository=database.repository,
        hub=hub,
        persister=persister,
        pool=pool,
        metrics=app[METRICS],
        cache_dir=settings.cache_dir if settings.use_cache else None,
        max_concurrent_scans=settings.max_concurrent_scans,
        max_queued_scans=settings.max_queued_scans,
        max_scan_cells=settings.max_scan_cells,
        cache_max_bytes=settings.cache_max_bytes,
        owner=ownership.owner,
        polygon=source_from_settings(settings, keep_bars=settings.use_cache),
        fleet=settings.redis_url is not None,
        owner_timeout_s=settings.owner_timeout_s,
    )
    jobs.start()
    listener = None
    if jobs.fleet:
        listener = Listener(
            database.url, (QUEUE_CHANNEL, CANCEL_CHANNEL), jobs.on_notify, on_connected=jobs.wake
        )
        listener.start()
    app[METRICS].attach(jobs=jobs, hub=hub, streams=app[STREAM_STATS])
    app[DATABASE], app[PERSISTER], app[POOL], app[JOBS] = (
        database,
        persister,
        pool,
        jobs,
    )
    try:
        yield
    finally:
        if listener is not None:
            await listener.stop()
        await jobs.shutdown()
        await persister.drain(timeout_s=10.0)
        await persister.stop()
        await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
        await ownership.stop()
        await database.close()


async def _pruning(app: web.Application) -> AsyncIterator[None]:
    """Retention in the background (server/retention.py), unless both periods are 0."""
    settings = app[SETTINGS]
    policy = RetentionPolicy(settings.results_retention_days, settings.timings_retention_days)
    if not policy.results_days and not policy.timings_days:
        yield
        return
    retention = Retention(app[DATABASE].pool, policy, on_rows=app[METRICS].pruned)
    task = asyncio.create_task(prune_forever(retention, settings.prune_interval_s))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _settle_mirrors(app: web.Application) -> AsyncIterator[None]:
    """Fleet mode: end the mirrored scans that the database says have ended.

    A mirror hears a scan's end from its owner through Redis, unless the owner died
    (another instance then records the scan ``interrupted``) or the end came during a
    Redis outage. Either way the database has it: a mirrored scan silent for
    ``MIRROR_STALE_S`` is looked up there, and its stored final state is published in the
    owner's stream (next seq, same epoch), so its watchers get it and close as usual.
    """
    if BUS not in app:
        yield
        return
    task = asyncio.create_task(_settle_mirrors_forever(app[HUB], app[DATABASE]))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _settle_mirrors_forever(hub: Hub, database: Database) -> None:
    while True:
        await asyncio.sleep(MIRROR_CHECK_S)
        for topic in hub.running_topics(mirror=True):
            latest = hub.latest_message(topic)
            if latest is None or time.time() - latest.published_at < MIRROR_STALE_S:
                continue
            try:
                scan = await database.repository.get_scan(topic)
            except StorageError:
                break  # the database is away too: try again later
            latest = hub.latest_message(topic)  # it may have moved meanwhile
            if scan is None or scan.status not in TERMINAL_STATUSES or latest is None:
                continue
            snapshot = progress_from_record(scan)
            snapshot["seq"] = latest.seq + 1
            hub.publish(topic, snapshot, mirror=True)


async def _on_shutdown(app: web.Application) -> None:
    """Runs before connections are closed: watchers are told the server is going away
    (1001; they reconnect to whatever serves next), then running scans are cancelled and
    recorded as such."""
    if HUB in app:
        app[HUB].shutdown()
    if JOBS in app:
        await app[JOBS].shutdown()


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings.from_env()
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware, access_middleware, auth_middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[STREAM_STATS] = StreamStats()
    app[OPENAPI] = openapi.document_bytes(settings, version=version())
    app.cleanup_ctx.append(_progress_plane)
    app.cleanup_ctx.append(_services)
    app.cleanup_ctx.append(_settle_mirrors)
    app.cleanup_ctx.append(_pruning)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_post("/scan/start", start_scan)
    app.router.add_get("/scan/progress/{scan_id}", scan_progress)
    app.router.add_get("/scan/results/{scan_id}", scan_results)
    app.router.add_get("/scan/ws/{scan_id}", scan_ws)
    app.router.add_get("/scan/stream/{scan_id}", scan_sse)
    app.router.add_post("/scan/cancel/{scan_id}", cancel_scan)
    app.router.add_get("/scan/active", active_scans)
    app.router.add_get("/scans", list_scans)
    app.router.add_get("/stats/stages", stage_stats)
    app.router.add_get("/stats/stages/trend", stage_trend)
    app.router.add_get("/stats/accuracy", accuracy_stats)
    app.router.add_get("/universe", universe_routes.universe_sectors)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_document)
    app.router.add_get("/", index)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/static/{name}", static_file)
    return app
