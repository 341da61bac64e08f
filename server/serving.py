"""Serving the application on a socket: what ``technic serve`` runs.

Why not ``web.run_app``: aiohttp 3 answers a request its HTTP parser rejects (an invalid
method, a header over 8 KiB, an unsupported Content-Encoding) itself, before any middleware
runs, with a text/plain body that quotes the offending bytes back, and logs each one at
ERROR with a traceback. aiohttp 3 has no public hook for those (aiohttp issue #3287;
aiohttp 4 hands them to the middlewares as ``request.pre_handler_error``). They all go
through one method, ``RequestHandler.handle_error``, so connections here are served by
:class:`_Connection`, whose ``handle_error`` answers in the service's error shape with one
log line (``server.errors``), and whose ``log_exception`` keeps what a client caused (a body
it sent that cannot be decoded, seen again when aiohttp drains it after the answer; a client
that left) out of the ERROR log. aiohttp builds each connection's handler in
``web.Server.__call__``, which takes no class, so :class:`AppRunner` gives the server it
made the class :class:`_Server`, whose ``__call__`` builds a :class:`_Connection` the same
way. That relies on three aiohttp internals (``AppRunner._make_server``, ``Server._loop``,
``Server._kwargs``), unchanged from 3.9 to 3.14; with aiohttp 4 this module reduces to
:func:`serve` around a plain ``web.AppRunner``.

:func:`serve` is ``run_app`` reduced to what ``technic serve`` uses, on a loop the caller
runs: SIGINT and SIGTERM stop it and it returns (exit status 0), after the application's
``on_shutdown`` (watchers told 1001, running scans cancelled and recorded), open requests
given ``shutdown_timeout_s``, and its cleanup.
"""

from __future__ import annotations

import asyncio
import signal
from http import HTTPStatus
from typing import Any

from aiohttp import http_exceptions, web
from technic.server.errors import describe_protocol_error, error_response, json_response

# Exceptions a client causes; aiohttp logs them through log_exception after answering.
_CLIENT_ERRORS = (http_exceptions.HttpProcessingError, web.RequestPayloadError, ConnectionError)


class _Connection(web.RequestHandler):
    """One client connection: aiohttp's, with its own errors answered and logged like ours."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The answer to a request aiohttp could not parse (4xx) or whose handler escaped
        every middleware (5xx, which does not happen unless there is a bug)."""
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already started; no error answer possible")
        if status < 500:
            text, field = describe_protocol_error(exc)
            response = error_response(
                status, text, field, context=f"malformed request from {request.remote}"
            )
        else:
            self.log_exception("error handling a request from %s", request.remote, exc_info=exc)
            reason = HTTPStatus(status).phrase.lower()
            response = json_response({"error": reason, "field": None}, status=status)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        error = kw.get("exc_info")
        if isinstance(error, _CLIENT_ERRORS):
            self.logger.debug(*args, **kw)  # answered already, or nobody left to answer
        else:
            super().log_exception(*args, **kw)


class _Server(web.Server):
    """``web.Server`` whose connections are :class:`_Connection`."""

    def __call__(self) -> web.RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer protocol errors as the application does."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # no state of its own: only __call__ differs
        return server


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    shutdown_timeout_s: float = 15.0,
    reuse_port: bool = False,
) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT or SIGTERM, then shut it down.

    ``reuse_port`` binds with ``SO_REUSEPORT``, so several processes share the port
    (``technic serve --processes``)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = AppRunner(
        app, access_log=None, keepalive_timeout=75.0, shutdown_timeout=shutdown_timeout_s
    )
    try:
        await runner.setup()
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
        await stop.wait()
    finally:
        await runner.cleanup()
