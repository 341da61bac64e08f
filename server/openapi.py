"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``.

Built in Python rather than kept as a JSON or YAML file, because most of what it says is
already defined once in the code, and a file would be a second copy that drifts: the
start fields and their ranges (``engine.scan_config``, ``server.requests``), the sort keys
(``storage.RESULT_SORTS``), the status and stage vocabularies (``engine.progress``), the
result columns (``engine.fields``). The document also depends on the deployment: the
largest ``max_symbols`` is ``MAX_SYMBOLS_CAP``, and routes answer 401 only when
``TECHNIC_API_TOKEN`` is set. So each application builds it once from its settings and
serves the same bytes to every request.

The document is the contract: ``tests/test_openapi.py`` validates it and checks real
answers against it, and ``tests/test_fuzz.py`` runs schemathesis on a live server with it.
"""

from __future__ import annotations

from typing import Any

import orjson
from technic.config import Settings
from technic.engine.eta import CHECKPOINTS
from technic.engine.fields import NUMERIC_FIELDS, SIGNALS
from technic.engine.progress import SCAN_STAGES, STAGE_END_STATUSES, TERMINAL_STATUSES
from technic.engine.scan_config import MAX_BARS, MIN_BARS, TRADE_STYLES, UNIVERSES
from technic.server.requests import API_PROVIDERS, DEFAULT_API_MAX_SYMBOLS
from technic.server.views import PERFORMANCE_KEYS
from technic.storage import RESULT_SORTS, SCAN_STATUSES
from technic.storage.repository import ACCURACY_RECENT_SCANS, MAX_OFFSET, MAX_PAGE_SIZE

Schema = dict[str, Any]

STAGE_NAMES = [name for name, _ in SCAN_STAGES]
STAGE_STATUSES = ["pending", "running", *sorted(STAGE_END_STATUSES)]
RESULT_SORT_VALUES = [*RESULT_SORTS, *(f"-{key}" for key in RESULT_SORTS)]
DURATION_PATTERN = "^[0-9]{1,9}[mhdw]$"
# A resume point: the seq of the last snapshot a watcher has, optionally prefixed with the
# epoch of the stream it came from (``EPOCH.SEQ``, the SSE ``id:``).
CURSOR: Schema = {"type": "string", "pattern": "^([A-Za-z0-9_-]{1,64}[.])?[0-9]{1,18}$"}
JSON = "application/json"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _or_null(schema: Schema) -> Schema:
    if "type" in schema and "$ref" not in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return {**schema, "type": [*kinds, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _object(
    properties: dict[str, Schema],
    *,
    optional: tuple[str, ...] = (),
    closed: bool = True,
    **extra: Any,
) -> Schema:
    """An object whose properties are all required but ``optional`` ones (the API sends
    every key, null when there is no value) and, when ``closed``, no others."""
    required = [name for name in properties if name not in optional]
    schema: Schema = {"type": "object", "required": required, "properties": properties}
    if closed:
        schema["additionalProperties"] = False
    return {**schema, **extra}


NUMBER: Schema = {"type": "number"}
INTEGER: Schema = {"type": "integer"}
STRING: Schema = {"type": "string"}
TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
EPOCH_S: Schema = {"type": "number", "description": "Seconds since the Unix epoch."}
NAMES: Schema = {"type": "array", "items": {"type": "string", "minLength": 1}}
R_SQUARED: Schema = {
    "type": "number",
    "maximum": 1,
    "description": "R-squared of the bar against a straight line over time: 1 is perfectly "
    "steady; negative for a bar worse than a flat line.",
}


def _schemas(settings: Settings) -> dict[str, Schema]:
    row_numbers = {name: _or_null(NUMBER) for name in NUMERIC_FIELDS}
    return {
        "Error": _object(
            {
                "error": {"type": "string", "description": "What is wrong, for a person."},
                "field": _or_null(
                    {"type": "string", "description": "The one input to fix, when there is one."}
                ),
            },
            closed=False,
            description="Every error answer. A 409 from the results route also carries the "
            "scan's `status`; a 410 its `status` and `results_pruned_at`.",
        ),
        "StartRequest": {
            "type": "object",
            "additionalProperties": False,
            "description": "The seed's body (`max_symbols`, `min_tech_rating`, `sectors`, "
            "`async_mode`) plus the rest of a scan's settings; every field is optional. An "
            "unknown field, sector or industry is a 400 naming it.",
            "properties": {
                "max_symbols": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": settings.max_symbols_cap,
                    "default": min(DEFAULT_API_MAX_SYMBOLS, settings.max_symbols_cap),
                    "description": "Largest universe after the filters (MAX_SYMBOLS_CAP); "
                    "with `provider: synthetic`, the number of generated symbols.",
                },
                "min_tech_rating": {"type": "number", "minimum": 0, "maximum": 100},
                "sectors": _or_null(NAMES),
                "industries": _or_null(NAMES),
                "symbols": _or_null(NAMES),
                "provider": {
                    "enum": list(API_PROVIDERS),
                    "default": "sample",
                    "description": "`polygon` (also `massive`): daily bars from the Massive "
                    "(Polygon.io) API; needs POLYGON_API_KEY on the server (else a 400).",
                },
                "universe": {
                    "enum": list(UNIVERSES),
                    "default": "bundled",
                    "description": "`market` (polygon only): every active US common stock "
                    "the provider lists, sectors from their SIC codes.",
                },
                "as_of": _or_null({"type": "string", "format": "date"}),
                "trade_style": {"enum": list(TRADE_STYLES), "default": "swing"},
                "account_size": {"type": "number", "minimum": 1, "maximum": 1e12},
                "risk_pct": {"type": "number", "minimum": 0.01, "maximum": 100},
                "target_rr": {"type": "number", "minimum": 0.1, "maximum": 50},
                "bars": {"type": "integer", "minimum": MIN_BARS, "maximum": MAX_BARS},
                "seed": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                "lookback_bars": {"type": "integer", "minimum": MIN_BARS, "maximum": MAX_BARS},
                "async_mode": {
                    "type": "boolean",
                    "default": True,
                    "description": "false: answer 200 with the results once the scan ends.",
                },
            },
        },
        "StartAccepted": _object(
            {
                "scan_id": {"type": "string", "format": "uuid"},
                "status": {"const": "pending"},
                "message": STRING,
                "progress_url": STRING,
                "websocket_url": STRING,
                "sse_url": STRING,
            }
        ),
        "StageProgress": _object(
            {
                "weight": NUMBER,
                "progress": {"type": "number", "minimum": 0, "maximum": 100},
                "status": {"enum": STAGE_STATUSES},
                "current": NUMBER,
                "total": _or_null(NUMBER),
                "duration": _or_null(NUMBER),
                "throughput": _or_null(NUMBER),
                "eta": _or_null(NUMBER),
                "unit": {
                    "type": "string",
                    "description": "What `current` and `total` count: symbols, or "
                    "requests (data_fetching of a network provider). Absent from a snapshot "
                    "rebuilt from storage.",
                },
                "tail": {
                    **_or_null(NUMBER),
                    "description": "Seconds the finished stage ran after its last unit was "
                    "counted (writing the fetched block, say); null while it runs or when its "
                    "units never all counted. Learned per kind, so the ETA expects it.",
                },
            },
            optional=("unit", "tail"),
        ),
        "Progress": _object(
            {
                "scan_id": {"type": "string", "format": "uuid"},
                "status": {"enum": list(SCAN_STATUSES)},
                "current_stage": _or_null({"enum": STAGE_NAMES}),
                "stages": _object({name: _ref("StageProgress") for name in STAGE_NAMES}),
                "overall_progress": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 100,
                    "description": "The seed's weighted sum of stage percents "
                    "(universe 5 %, fetching 20 %, scanning 70 %, finalisation 5 %), exactly; "
                    "not linear in time when stages run at rates unlike their weights.",
                },
                "time_progress": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 100,
                    "description": "Percent of the expected total time done: elapsed / "
                    "(elapsed + overall_eta), never going back, 100 only when the scan "
                    "completed. With priors from past scans of the same kind it grows "
                    "linearly in time: the bar to show. Rebuilt from storage: 100 for a "
                    "completed scan, else overall_progress.",
                },
                "overall_eta": _or_null(NUMBER),
                "overall_eta_formatted": _or_null(STRING),
                "stage_progress": NUMBER,
                "stage_eta": _or_null(NUMBER),
                "stage_eta_formatted": _or_null(STRING),
                "stage_throughput": _or_null(NUMBER),
                "message": STRING,
                "seq": {"type": "integer", "minimum": 0},
                "elapsed_seconds": _or_null(NUMBER),
                "started_at": _or_null(EPOCH_S),
                "completed_at": _or_null(EPOCH_S),
                "error": _or_null(STRING),
                "published_at": EPOCH_S,
                "epoch": {
                    "type": ["string", "null"],
                    "description": "Names the stream `seq` counts in (a restarted server "
                    "starts a new one); null when rebuilt from the database.",
                },
            },
            optional=("published_at", "epoch"),
            description="The seed's progress snapshot plus `seq` (rises with every "
            "snapshot of the scan), timestamps and per-stage detail. `published_at` is "
            "absent when the snapshot is rebuilt from the database.",
        ),
        "ResultRow": {
            "type": "object",
            "description": "One ranked candidate: the columns of `engine.fields.ROW_FIELDS`.",
            "required": ["rank", "symbol", "tech_rating", "signal"],
            "properties": {
                "rank": {"type": "integer", "minimum": 1},
                "symbol": STRING,
                "name": _or_null(STRING),
                "sector": _or_null(STRING),
                "industry": _or_null(STRING),
                "as_of": _or_null({"type": "string", "format": "date"}),
                "signal": _or_null({"enum": list(SIGNALS)}),
                **row_numbers,
            },
        },
        "ProgressEvent": {
            "type": "object",
            "description": "One Server-Sent Event (this schema describes each event).",
            "required": ["data", "event", "id"],
            "properties": {
                "event": {"enum": ["message", "progress", *sorted(TERMINAL_STATUSES)]},
                "id": {**CURSOR, "description": "Send back as `Last-Event-ID` to resume."},
                "data": {
                    "type": "string",
                    "contentMediaType": JSON,
                    "contentSchema": _ref("Progress"),
                },
                "retry": {"type": "integer", "minimum": 0},
            },
        },
        "Failure": _object({"symbol": STRING, "reason": STRING}),
        "ResultsPage": _object(
            {
                "scan_id": {"type": "string", "format": "uuid"},
                "status": {"enum": list(SCAN_STATUSES)},
                "results": {"type": "array", "items": _ref("ResultRow")},
                "count": {"type": "integer", "minimum": 0},
                "total": {"type": "integer", "minimum": 0},
                "performance_metrics": _object(
                    {key: {"type": ["number", "boolean", "null"]} for key in PERFORMANCE_KEYS}
                ),
                "stage_timings": _or_null({"type": "object", "additionalProperties": NUMBER}),
                "failures": {"type": "array", "items": _ref("Failure")},
            },
            description="`count` rows of `total`, from `offset` in the chosen order.",
        ),
        "CancelAnswer": _object(
            {
                "scan_id": {"type": "string", "format": "uuid"},
                "status": {"enum": list(SCAN_STATUSES)},
                "message": STRING,
            }
        ),
        "ActiveScan": _object(
            {
                "scan_id": {"type": "string", "format": "uuid"},
                "status": {"enum": list(SCAN_STATUSES)},
                "instance": {
                    **_or_null(STRING),
                    "description": "The owner name (host:pid:space:token) of the instance"
                    " that runs the scan; null for a scan queued in a fleet (REDIS_URL set)"
                    " that no instance has claimed yet.",
                },
                "created_at": TIMESTAMP,
                "overall_progress": NUMBER,
                "time_progress": NUMBER,
                "current_stage": _or_null({"enum": STAGE_NAMES}),
                "overall_eta_formatted": _or_null(STRING),
                "config": {"type": "object"},
            }
        ),
        "ActiveScans": _object(
            {
                "active": {"type": "array", "items": _ref("ActiveScan")},
                "running": {"type": "integer", "minimum": 0},
                "queued": {"type": "integer", "minimum": 0},
            }
        ),
        "ScanSummary": _object(
            {
                "scan_id": {"type": "string", "format": "uuid"},
                "status": {"enum": list(SCAN_STATUSES)},
                "created_at": TIMESTAMP,
                "started_at": _or_null(TIMESTAMP),
                "finished_at": _or_null(TIMESTAMP),
                "duration_seconds": _or_null(NUMBER),
                "universe_size": _or_null(INTEGER),
                "symbols_scanned": _or_null(INTEGER),
                "symbols_failed": _or_null(INTEGER),
                "result_count": {"type": "integer", "minimum": 0},
                "error": _or_null(STRING),
                "stage_timings": _or_null({"type": "object", "additionalProperties": NUMBER}),
                "config": {"type": "object"},
            }
        ),
        "ScanList": _object(
            {
                "scans": {"type": "array", "items": _ref("ScanSummary")},
                "next_cursor": _or_null(
                    {"type": "string", "description": "Pass as `cursor` for the next page."}
                ),
            }
        ),
        "StageStatsRow": _object(
            {
                "stage": {"enum": STAGE_NAMES},
                "bucket": _or_null({"type": "string", "pattern": "^[0-9]+-[0-9]+$"}),
                "count": {"type": "integer", "minimum": 0},
                "mean_s": _or_null(NUMBER),
                "p50_s": _or_null(NUMBER),
                "p90_s": _or_null(NUMBER),
                "p99_s": _or_null(NUMBER),
                "total_s": _or_null(NUMBER),
                "symbols_per_s": _or_null(NUMBER),
                "share": _or_null(NUMBER),
                "dominant": {"type": "boolean"},
            }
        ),
        "StageStats": _object(
            {
                "since": TIMESTAMP,
                "until": TIMESTAMP,
                "by_bucket": {"type": "boolean"},
                "bucket": _or_null(STRING),
                "dominant_stage": _or_null({"enum": STAGE_NAMES}),
                "stages": {"type": "array", "items": _ref("StageStatsRow")},
            }
        ),
        "TrendInterval": _object(
            {
                "start": TIMESTAMP,
                "count": {"type": "integer", "minimum": 1},
                "p50_s": {"type": "number", "minimum": 0},
                "p90_s": {"type": "number", "minimum": 0},
                "symbols_per_s": _or_null({"type": "number", "minimum": 0}),
                "complete": {
                    "type": "boolean",
                    "description": "False for the interval still running (never judged).",
                },
            }
        ),
        "TrendVerdict": _object(
            {
                "trend": {"enum": ["slower", "faster", "steady", "unknown"]},
                "change_pct": _or_null(NUMBER),
                "since": _or_null(TIMESTAMP),
                "baseline_p50_s": _or_null({"type": "number", "minimum": 0}),
                "latest": _or_null(TIMESTAMP),
            }
        ),
        "StageTrendRow": _object(
            {
                "stage": {"enum": STAGE_NAMES},
                "verdict": _ref("TrendVerdict"),
                "intervals": {"type": "array", "items": _ref("TrendInterval")},
            }
        ),
        "StageTrend": _object(
            {
                "since": TIMESTAMP,
                "until": TIMESTAMP,
                "interval": {"enum": ["1h", "1d", "1w"]},
                "bucket": _or_null(STRING),
                "stages": {"type": "array", "items": _ref("StageTrendRow")},
            }
        ),
        "AccuracyCheckpoint": _object(
            {
                "checkpoint": {"enum": list(CHECKPOINTS)},
                "count": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Scans whose ETA at this checkpoint could be scored "
                    "(some time still remained).",
                },
                "median_abs_error_pct": _or_null({"type": "number", "minimum": 0}),
                "p90_abs_error_pct": _or_null({"type": "number", "minimum": 0}),
                "median_error_pct": _or_null(
                    {
                        "type": "number",
                        "description": "Signed: positive when the ETA said more time than it took.",
                    }
                ),
            }
        ),
        "AccuracyGroup": _object(
            {
                "provider": STRING,
                "bucket": _or_null({"type": "string", "pattern": "^[0-9]+-[0-9]+$"}),
                "scans": {"type": "integer", "minimum": 1},
                "checkpoints": {
                    "type": "array",
                    "items": _ref("AccuracyCheckpoint"),
                    "description": "Every checkpoint, in order.",
                },
                "median_time_linearity": _or_null(R_SQUARED),
                "median_overall_linearity": _or_null(R_SQUARED),
                "median_time_stall_s": _or_null({"type": "number", "minimum": 0}),
                "within_10pct_at_10": _or_null(
                    {
                        "type": "number",
                        "minimum": 0,
                        "maximum": 1,
                        "description": "Share of the scans scored at the 10 % checkpoint "
                        "whose ETA there was within 10 % of the time that remained.",
                    }
                ),
            }
        ),
        "ScanAccuracy": _object(
            {
                "scan_id": {"type": "string", "format": "uuid"},
                "finished_at": TIMESTAMP,
                "provider": STRING,
                "universe_size": _or_null({"type": "integer", "minimum": 0}),
                "error_pct": _object(
                    {str(c): _or_null(NUMBER) for c in CHECKPOINTS},
                    description="Signed ETA error at each checkpoint; null where none was "
                    "recorded or no time remained.",
                ),
                "time_linearity": _or_null(R_SQUARED),
                "overall_linearity": _or_null(R_SQUARED),
            }
        ),
        "AccuracyStats": _object(
            {
                "since": TIMESTAMP,
                "until": TIMESTAMP,
                "groups": {"type": "array", "items": _ref("AccuracyGroup")},
                "recent": {
                    "type": "array",
                    "items": _ref("ScanAccuracy"),
                    "maxItems": ACCURACY_RECENT_SCANS,
                    "description": "The newest scans of the window, newest first.",
                },
            }
        ),
        "Universe": _object(
            {
                "provider": {"enum": list(API_PROVIDERS)},
                "sectors": {"type": "array", "items": STRING},
                "industries": {"type": "array", "items": STRING},
                "symbols": _or_null(
                    {
                        "type": "integer",
                        "minimum": 0,
                        "description": "The universe's size; null for synthetic, whose "
                        "size is the scan's `max_symbols`.",
                    }
                ),
            }
        ),
        "Health": _object(
            {
                "status": {"enum": ["ok", "degraded"]},
                "database": {"enum": ["ok", "unavailable"]},
                "redis": {
                    "enum": ["ok", "unavailable"],
                    "description": "Fleet mode only (REDIS_URL set): whether progress is "
                    "shared with the other instances. While `unavailable` every instance "
                    "runs its scans and serves its own watchers; watchers of other "
                    "instances' scans catch up when Redis is back.",
                },
                "database_backlog": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Database writes waiting (kept through an outage).",
                },
                "workers": {"type": "integer", "minimum": 1},
                "active_scans": {"type": "integer", "minimum": 0},
                "queued_scans": {"type": "integer", "minimum": 0},
                "accepting_scans": {"type": "boolean"},
                "version": STRING,
            },
            optional=("redis",),
        ),
    }


def _error(description: str, **headers: Schema) -> Schema:
    response: Schema = {
        "description": description,
        "content": {JSON: {"schema": _ref("Error")}},
    }
    if headers:
        response["headers"] = headers
    return response


RESPONSES: dict[str, Schema] = {
    "BadRequest": _error("Malformed input: the message says what is wrong and `field` names it."),
    "Unauthorized": _error("A missing or wrong bearer token (only when a token is set)."),
    "Forbidden": _error("A cross-site request: an `Origin` or `Host` that is not allowed."),
    "NotFound": _error("No such scan (or path)."),
    "Conflict": _error("The scan has not ended yet; the body's `status` says where it is."),
    "Gone": _error(
        "The scan's results were pruned by retention (RESULTS_RETENTION_DAYS after it "
        "finished); its record and stage timings are kept. The body also carries `status` and "
        "`results_pruned_at` (ISO 8601)."
    ),
    "PayloadTooLarge": _error("The request body is over 64 KiB."),
    "UnsupportedMediaType": _error("The request body is not `application/json`."),
    "TooManyRequests": _error(
        "The scan queue is full (MAX_QUEUED_SCANS).",
        **{
            "Retry-After": {
                "description": "Seconds until a scan slot is likely to be free.",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    ),
    "ServiceUnavailable": _error(
        "The database is unreachable, the server is shutting down, (streams) there are "
        "MAX_CONNECTIONS watchers already, or (results) a just-finished scan's results are "
        "still being stored.",
        **{
            "Retry-After": {
                "description": "Seconds to wait before asking again, when known.",
                "required": False,
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    ),
}

SCAN_ID_PARAMETER: Schema = {
    "name": "scan_id",
    "in": "path",
    "required": True,
    "description": "The id `POST /scan/start` answered with; anything else is a 404.",
    "schema": {"type": "string", "format": "uuid"},
}


# What a client does next with the id of a started scan (schemathesis's stateful phase
# follows these too).
SCAN_LINKS: Schema = {
    name: {"operationId": operation_id, "parameters": {"scan_id": "$response.body#/scan_id"}}
    for name, operation_id in (
        ("progress", "getProgress"),
        ("results", "getResults"),
        ("cancel", "cancelScan"),
        ("events", "watchEvents"),
        ("websocket", "watchWebSocket"),
    )
}


def _window(name: str, meaning: str, default: str | None = "7d") -> Schema:
    """A query parameter naming a time window back from now, as ``storage/windows.py`` reads it."""
    schema: Schema = {"type": "string", "pattern": DURATION_PATTERN}
    if default is not None:
        schema["default"] = default
    return _query(name, schema, f"{meaning} (30m, 12h, 7d, 2w; at most 3660d).")


def _scan_kind_filters() -> list[Schema]:
    """The provider and universe-size bucket filters of the history statistics."""
    return [
        _query("provider", STRING, "Only this provider's scans."),
        _query(
            "bucket",
            {"type": "string", "pattern": "^[0-9]+(-[0-9]+)?$"},
            "Only this universe-size bucket (1000-9999), or a size's (2500).",
        ),
    ]


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _errors(*names: str) -> dict[str, Schema]:
    codes = {
        "BadRequest": "400",
        "Unauthorized": "401",
        "Forbidden": "403",
        "NotFound": "404",
        "Conflict": "409",
        "Gone": "410",
        "PayloadTooLarge": "413",
        "UnsupportedMediaType": "415",
        "TooManyRequests": "429",
        "ServiceUnavailable": "503",
    }
    return {codes[name]: {"$ref": f"#/components/responses/{name}"} for name in names}


def _json_ok(schema_name: str, description: str) -> Schema:
    return {"description": description, "content": {JSON: {"schema": _ref(schema_name)}}}


def _operation(
    operation_id: str,
    summary: str,
    responses: dict[str, Schema],
    *,
    errors: tuple[str, ...],
    protected: bool,
    settings: Settings,
    parameters: list[Schema] | None = None,
    **extra: Any,
) -> Schema:
    """One operation. Every route can answer 400 and 403 (a malformed request, a `Host`
    outside the allowlist); protected ones 401 when a token is set."""
    names = ["BadRequest", "Forbidden", *errors]
    if protected and settings.api_token is not None:
        names.append("Unauthorized")
    all_responses = {**responses, **_errors(*names)}
    operation: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "responses": dict(sorted(all_responses.items())),
    }
    if parameters:
        operation["parameters"] = parameters
    if not protected:
        operation["security"] = []
    return {**operation, **extra}


def _results_parameters() -> list[Schema]:
    return [
        _query(
            "limit",
            {"type": "integer", "minimum": 1},
            f"JSON: rows per page, at most {MAX_PAGE_SIZE} (the default). CSV: every row "
            "unless limited.",
        ),
        _query("offset", {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}, "Rows to skip."),
        _query(
            "sort",
            {"enum": RESULT_SORT_VALUES, "default": "rank"},
            "Sort key; a leading `-` sorts descending.",
        ),
        _query("order", {"enum": ["asc", "desc"]}, "Overrides the direction of `sort`."),
        _query(
            "format",
            {"enum": ["json", "csv"], "default": "json"},
            "`csv` answers text/csv with one line per row.",
        ),
    ]


def _paths(settings: Settings) -> dict[str, Schema]:
    scan_path = [SCAN_ID_PARAMETER]
    results_ok = {
        "description": "The page of results, or the CSV export with `format=csv`.",
        "content": {JSON: {"schema": _ref("ResultsPage")}, "text/csv": {"schema": STRING}},
    }
    start_example = {
        "max_symbols": min(100, settings.max_symbols_cap),
        "min_tech_rating": 50.0,
        "sectors": ["Information Technology"],
        "async_mode": True,
    }
    return {
        "/scan/start": {
            "post": _operation(
                "startScan",
                "Queue a scan",
                {
                    "202": _json_ok("StartAccepted", "Queued; follow it with the URLs given.")
                    | {"links": SCAN_LINKS},
                    "200": _json_ok("ResultsPage", "With `async_mode: false`: the results."),
                },
                errors=(
                    "PayloadTooLarge",
                    "UnsupportedMediaType",
                    "TooManyRequests",
                    "ServiceUnavailable",
                ),
                protected=True,
                requestBody={
                    "required": True,
                    "content": {JSON: {"schema": _ref("StartRequest"), "example": start_example}},
                },
                settings=settings,
            )
        },
        "/scan/progress/{scan_id}": {
            "get": _operation(
                "getProgress",
                "The scan's latest progress snapshot",
                {"200": _json_ok("Progress", "Live, or rebuilt from the database.")},
                errors=("NotFound", "ServiceUnavailable"),
                protected=True,
                parameters=scan_path,
                settings=settings,
            )
        },
        "/scan/results/{scan_id}": {
            "get": _operation(
                "getResults",
                "A page of a finished scan's ranked results",
                {"200": results_ok},
                errors=("NotFound", "Conflict", "Gone", "ServiceUnavailable"),
                protected=True,
                parameters=[*scan_path, *_results_parameters()],
                settings=settings,
            )
        },
        "/scan/ws/{scan_id}": {
            "get": _operation(
                "watchWebSocket",
                "WebSocket: each snapshot as a TEXT frame of Progress JSON",
                {
                    "101": {
                        "description": "Switching to WebSocket: the current snapshot, each "
                        "new one, the terminal one, then close 1000 (1001 on shutdown)."
                    }
                },
                errors=("NotFound", "ServiceUnavailable"),
                protected=True,
                parameters=[
                    *scan_path,
                    _query(
                        "since",
                        CURSOR,
                        "Resume: skip what this cursor (a snapshot's `seq`) covers.",
                    ),
                ],
                settings=settings,
            )
        },
        "/scan/stream/{scan_id}": {
            "get": _operation(
                "watchEvents",
                "Server-Sent Events: `id:` is the seq, `data:` the Progress JSON",
                {
                    "200": {
                        "description": "`retry:` first, then one event per snapshot until "
                        "the terminal one, with `: heartbeat` comments in quiet spells. By "
                        "default events are unnamed (`message`) and the terminal one is "
                        "sent again named after its status; `events=named` names every one.",
                        "content": {"text/event-stream": {"schema": _ref("ProgressEvent")}},
                    },
                    "204": {"description": "The client already has the terminal event."},
                },
                errors=("NotFound", "ServiceUnavailable"),
                protected=True,
                parameters=[
                    *scan_path,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": CURSOR,
                        "description": "Resume after this event `id:` (EventSource sends it).",
                    },
                    _query(
                        "last_event_id",
                        CURSOR,
                        "Resume after this event `id:` (for clients that cannot set the header).",
                    ),
                    _query(
                        "events",
                        {"enum": ["default", "named"], "default": "default"},
                        "`named`: `event: progress`, then the terminal status, on every event.",
                    ),
                ],
                settings=settings,
            )
        },
        "/scan/cancel/{scan_id}": {
            "post": _operation(
                "cancelScan",
                "Cancel a queued or running scan (it stops within a second)",
                {"200": _json_ok("CancelAnswer", "Cancelling, or the status it ended with.")},
                errors=("NotFound", "UnsupportedMediaType", "ServiceUnavailable"),
                protected=True,
                parameters=scan_path,
                settings=settings,
            )
        },
        "/scan/active": {
            "get": _operation(
                "listActiveScans",
                "Scans running and queued: this process's, or the whole fleet's with REDIS_URL",
                {"200": _json_ok("ActiveScans", "Running first, then queued in order.")},
                errors=(),
                protected=True,
                settings=settings,
            )
        },
        "/scans": {
            "get": _operation(
                "listScans",
                "Stored scans, newest first",
                {"200": _json_ok("ScanList", "One page; `next_cursor` is null on the last.")},
                errors=("ServiceUnavailable",),
                protected=True,
                parameters=[
                    _query("status", {"enum": list(SCAN_STATUSES)}, "Only scans in this status."),
                    _window("since", "Only scans created within this window", default=None),
                    _window("until", "Only scans created at least this long ago", default=None),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                        "Scans per page.",
                    ),
                    _query("cursor", STRING, "The previous page's `next_cursor`."),
                ],
                settings=settings,
            )
        },
        "/stats/stages": {
            "get": _operation(
                "stageStats",
                "Per stage over recent scans: count, mean, p50/p90/p99, symbols/s",
                {"200": _json_ok("StageStats", "The dominant stage is marked.")},
                errors=("ServiceUnavailable",),
                protected=True,
                parameters=[
                    _window("since", "The window looked at"),
                    _query(
                        "by_bucket",
                        {"enum": ["true", "false", "1", "0"], "default": "false"},
                        "Also split by universe size (0-9, 10-99, ...).",
                    ),
                ],
                settings=settings,
            )
        },
        "/stats/stages/trend": {
            "get": _operation(
                "stageTrend",
                "Per stage and interval: count, p50/p90, symbols/s, and a regression verdict",
                {
                    "200": _json_ok(
                        "StageTrend", "Stages in pipeline order, intervals oldest first."
                    )
                },
                errors=("ServiceUnavailable",),
                protected=True,
                parameters=[
                    _window("since", "The window looked at", default="30d"),
                    _query("interval", {"enum": ["1h", "1d", "1w"], "default": "1d"}, "Interval."),
                    _query("stage", {"enum": STAGE_NAMES}, "Only this stage."),
                    *_scan_kind_filters(),
                ],
                settings=settings,
            )
        },
        "/stats/accuracy": {
            "get": _operation(
                "accuracyStats",
                "How good the ETAs and progress bars of completed scans were",
                {
                    "200": _json_ok(
                        "AccuracyStats",
                        "By provider and universe size: the ETA error at each checkpoint "
                        "(10, 25, 50, 75, 90 % of the expected time) and the linearity of the "
                        "bars; and the newest scans one by one.",
                    )
                },
                errors=("ServiceUnavailable",),
                protected=True,
                parameters=[
                    _window("since", "Scans finished within this window"),
                    _window("until", "Only scans finished at least this long ago", default=None),
                    *_scan_kind_filters(),
                ],
                settings=settings,
            )
        },
        "/universe": {
            "get": _operation(
                "getUniverse",
                "The sectors and industries a scan may be narrowed to",
                {"200": _json_ok("Universe", "Sorted names.")},
                errors=("ServiceUnavailable",),
                protected=True,
                parameters=[
                    _query(
                        "provider",
                        {"enum": list(API_PROVIDERS), "default": "sample"},
                        "Whose universe.",
                    )
                ],
                settings=settings,
            )
        },
        "/health": {
            "get": _operation(
                "health",
                "Liveness and the database's state (never needs a token)",
                {
                    "200": _json_ok(
                        "Health",
                        "`degraded` while the database (or, in fleet mode, Redis) is unreachable.",
                    )
                },
                errors=(),
                protected=False,
                settings=settings,
            )
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus metrics",
                {
                    "200": {
                        "description": "The text exposition format, or OpenMetrics when the "
                        "`Accept` header asks for it.",
                        "content": {
                            "text/plain": {"schema": STRING},
                            "application/openmetrics-text": {"schema": STRING},
                        },
                    }
                },
                errors=(),
                protected=True,
                settings=settings,
            )
        },
        "/openapi.json": {
            "get": _operation(
                "openapi",
                "This document",
                {
                    "200": {
                        "description": "OpenAPI 3.1.",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    }
                },
                errors=(),
                protected=False,
                settings=settings,
            )
        },
        "/": {
            "get": _operation(
                "page",
                "The web page",
                {"200": {"description": "HTML.", "content": {"text/html": {"schema": STRING}}}},
                errors=("NotFound",),
                protected=False,
                settings=settings,
            )
        },
        "/favicon.ico": {
            "get": _operation(
                "favicon",
                "The icon, for browsers showing a page that names none",
                {"200": {"description": "SVG.", "content": {"image/svg+xml": {"schema": STRING}}}},
                errors=(),
                protected=False,
                settings=settings,
            )
        },
        "/static/{name}": {
            "get": _operation(
                "staticFile",
                "The page's scripts, styles and icon",
                {
                    "200": {
                        "description": "The file.",
                        "content": {
                            media: {"schema": STRING}
                            for media in (
                                "text/html",
                                "text/css",
                                "text/javascript",
                                "application/javascript",
                                "image/svg+xml",
                            )
                        },
                    }
                },
                errors=("NotFound",),
                protected=False,
                parameters=[
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": STRING,
                        "example": "app.js",
                        "description": "One of the page's files (server/static/).",
                    }
                ],
                settings=settings,
            )
        },
    }


def build_document(settings: Settings, *, version: str) -> dict[str, Any]:
    """The document for a server running with ``settings``."""
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "technic",
            "version": version,
            "summary": "A live technical stock scanner: four-stage scans, progress over "
            "WebSocket and SSE, history in PostgreSQL.",
        },
        "paths": _paths(settings),
        "components": {"schemas": _schemas(settings), "responses": RESPONSES},
    }
    if settings.api_token is not None:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "queryToken": {"type": "apiKey", "in": "query", "name": "token"},
        }
        document["security"] = [{"bearer": []}]
        for path in ("/scan/ws/{scan_id}", "/scan/stream/{scan_id}"):
            document["paths"][path]["get"]["security"] = [{"bearer": []}, {"queryToken": []}]
    return document


def document_bytes(settings: Settings, *, version: str) -> bytes:
    return orjson.dumps(build_document(settings, version=version))
