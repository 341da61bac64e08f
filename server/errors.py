"""The one shape of an error answer, and the one log line it costs.

Every error the service answers with is JSON ``{"error": message, "field": name or null}``
built by :func:`error_response`: a handler's ``RequestError`` and a storage error (through
``error_middleware`` in ``server/app.py``), a body that cannot be read, and a request
aiohttp's own parser rejects before any middleware runs (``server/serving.py``). The same
function logs it, so a flood of bad requests stays readable: a client's mistake (4xx) is
one INFO line without a traceback, a service that cannot answer (5xx) one WARNING line.
Only an exception nobody expected is logged with its traceback, once, at ERROR.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import http_exceptions, web

log = logging.getLogger(__name__)

# What a logged message may show of a client's text: one line, bounded.
_MAX_LOGGED_CHARS = 300


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(
    status: int,
    message: str,
    field: str | None = None,
    *,
    context: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    """The error answer, logged as one line; ``context`` says which request it answers."""
    log.log(
        logging.INFO if status < 500 else logging.WARNING,
        "%d %s: %s",
        status,
        context,
        _one_line(message),
    )
    body: dict[str, Any] = {"error": message, "field": field}
    body.update(extra or {})
    return json_response(body, status=status, headers=headers)


def request_context(request: web.BaseRequest) -> str:
    """``METHOD /raw/path from ADDRESS`` (the raw path: percent-escapes stay escaped)."""
    return f"{request.method} {_one_line(request.raw_path)} from {request.remote}"


def describe_protocol_error(error: BaseException | None) -> tuple[str, str | None]:
    """What is wrong with a request aiohttp could not parse or decode, and the field.

    aiohttp's own messages quote the offending bytes back; these name the problem instead.
    """
    if isinstance(error, web.RequestPayloadError) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, http_exceptions.BadHttpMethod):
        return "malformed request line: invalid method", None
    if isinstance(error, http_exceptions.BadStatusLine):
        return "malformed request line", None
    if isinstance(error, http_exceptions.LineTooLong):
        limit = error.args[1] if len(error.args) > 1 else "Unknown"
        return f"request line or header field longer than {limit} bytes", None
    if isinstance(error, http_exceptions.ContentEncodingError):
        return (
            "request body cannot be decoded: its Content-Encoding is not supported "
            "(send identity, gzip or deflate) or does not match the body",
            "Content-Encoding",
        )
    if isinstance(error, http_exceptions.TransferEncodingError):
        return "malformed chunked request body", "Transfer-Encoding"
    if isinstance(error, http_exceptions.ContentLengthError):
        return "request body shorter than its Content-Length", "Content-Length"
    if isinstance(error, http_exceptions.InvalidHeader):
        return "malformed header field", None
    if isinstance(error, http_exceptions.InvalidURLError):
        return "malformed request target", None
    return "malformed HTTP request", None


def _one_line(text: str) -> str:
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= _MAX_LOGGED_CHARS else text[:_MAX_LOGGED_CHARS] + "..."
