"""Watching a scan that runs on a technic server, from a terminal.

``technic watch SCAN_ID [--server URL]`` and ``technic scan --server URL ...`` draw the same
multi-stage view as the local ``technic scan`` (``cli.terminal_view.render``), fed by the
scan's WebSocket, and exit with how the scan ended: 0 completed, 1 failed or interrupted,
130 cancelled (2 for bad arguments, an unknown scan or a start request the server refused).

How the feed works (the page's ``live.js`` does the same in the browser): ask
``GET /scan/progress/{id}`` first (it paints at once and tells an unknown scan, 404, from a
missing token, 401), then follow ``/scan/ws/{id}?since=EPOCH.SEQ``, the cursor of the last
snapshot taken (``server/cursor.py``). When the socket drops, the view says it is
reconnecting and retries with a backoff of 0.5 s doubling to 5 s, for up to
``RECONNECT_TIMEOUT_S``; each retry starts with the REST snapshot again, which is
authoritative even when a restarted server numbers snapshots from zero (a scan that was
running when its server died comes back ``interrupted``), and a snapshot of another stream
(another epoch) is newer whatever its seq.

On a terminal the view is redrawn in place; elsewhere (a pipe, a log file) each stage's
start and end is printed as the local scan logs them, and the final view once at the end.
Ctrl-C stops ``watch`` (the scan goes on, exit 130); in ``scan --server`` it cancels the
scan on the server first, like Ctrl-C cancels a local scan.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

import orjson
from technic.cli.exit_codes import (
    EXIT_BY_STATUS,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
)
from technic.cli.output import format_results, write_output
from technic.cli.scan_options import MARKET_UNIVERSE, scan_config
from technic.cli.terminal_view import LiveView, render
from technic.engine.progress import STAGE_END_STATUSES, TERMINAL_STATUSES
from technic.server.cursor import Cursor

# aiohttp is imported by the functions that talk to a server: every other `technic` command
# (the local `technic scan` above all) then starts without paying for it.
if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

RECONNECT_TIMEOUT_S = 60.0
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.5, 5.0
CANCEL_WAIT_S = 15.0
# `technic scan` options that only make sense for a scan run here, not on a server.
LOCAL_ONLY = {
    "data_dir": "--data-dir",
    "universe": "--universe",
    "adjusted": "--adjusted",
    "workers": "--workers",
    "no_cache": "--no-cache",
}

Snapshot = dict[str, Any]


class _Unavailable(Exception):
    """The server answered 5xx (starting, shutting down, database away): retry later."""


class RemoteError(Exception):
    """The server cannot be used for this: one line for stderr, and the exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Remote:
    """Where the server is and how to authenticate; ``base_url`` has no trailing slash."""

    base_url: str
    token: str | None = None

    @classmethod
    def parse(cls, url: str | None, token: str | None) -> Remote:
        text = (url or default_server()).strip().rstrip("/")
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RemoteError(
                f"--server must be an http:// or https:// URL, got {text!r}", EXIT_USAGE
            )
        return cls(text, token or os.environ.get("TECHNIC_API_TOKEN") or None)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def ws_url(self, scan_id: str, since: Cursor | None) -> str:
        scheme = "wss" if self.base_url.startswith("https:") else "ws"
        url = f"{scheme}{self.base_url[self.base_url.index(':') :]}/scan/ws/{scan_id}"
        return url if since is None else f"{url}?since={since}"

    def page_url(self, scan_id: str) -> str:
        return f"{self.base_url}/#/scan/{scan_id}"


def default_server() -> str:
    """``TECHNIC_SERVER``, else the local ``technic serve`` on ``PORT`` (8000)."""
    return os.environ.get("TECHNIC_SERVER") or f"http://127.0.0.1:{os.environ.get('PORT') or 8000}"


def parse_scan_id(text: str) -> str:
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise RemoteError(
            f"{text!r} is not a scan id (a UUID like those /scans lists)", EXIT_USAGE
        ) from None


# -- what the terminal shows ------------------------------------------------------------------


class Reporter:
    """Draws snapshots: the live view on a TTY, stage transitions and the final view elsewhere."""

    def __init__(self, stream: TextIO, *, quiet: bool = False, live: bool | None = None) -> None:
        self.stream = stream
        self.quiet = quiet
        self.view = LiveView(stream, enabled=False if quiet else live)
        self.last: Snapshot | None = None
        self._stages: dict[str, str] = {}

    def snapshot(self, snapshot: Snapshot) -> None:
        self.last = snapshot
        if self.view.enabled:
            self.view.update(snapshot)
            return
        if self.quiet:
            return
        for name, stage in (snapshot.get("stages") or {}).items():
            status = stage.get("status", "pending")
            before = self._stages.get(name, "pending")
            if status == before:
                continue
            self._stages[name] = status
            if before == "pending" and status != "skipped":
                self._line(f"[INFO] Starting stage: {name}")
            if status in STAGE_END_STATUSES:
                duration = float(stage.get("duration") or 0.0)
                self._line(f"[INFO] {status.capitalize()} stage: {name} ({duration:.1f}s)")

    def reconnecting(self, url: str, attempt: int) -> None:
        text = f"Connection to {url} lost; reconnecting (attempt {attempt})…"
        if self.view.enabled and self.last is not None:
            self.view.update({**self.last, "message": text})
        elif not self.quiet:
            self._line(f"[WARNING] {text}")

    def finish(self, snapshot: Snapshot) -> None:
        """The final view, once, where it was not drawn live."""
        if not self.view.enabled and not self.quiet:
            self._line("\n".join(render(snapshot)))

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


# -- following a scan -------------------------------------------------------------------------


async def _get_json(session: aiohttp.ClientSession, remote: Remote, path: str, **query: Any) -> Any:
    async with session.get(
        f"{remote.base_url}{path}", params=query or None, headers=remote.headers
    ) as response:
        body = await response.read()
        data = _loads(body)
        if response.status == 401:
            raise RemoteError(
                f"{remote.base_url} needs a token: pass --token or set TECHNIC_API_TOKEN"
            )
        if response.status >= 500:
            raise _Unavailable(f"{path}: {response.status}")
        if response.status >= 400:
            message = (
                data.get("error") if isinstance(data, dict) else body[:200].decode(errors="replace")
            )
            raise RemoteError(
                f"{path}: {response.status} {message}",
                EXIT_USAGE if response.status == 404 else EXIT_FAILED,
            )
        return data


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


async def follow(
    session: aiohttp.ClientSession,
    remote: Remote,
    scan_id: str,
    reporter: Reporter,
    *,
    reconnect_timeout_s: float = RECONNECT_TIMEOUT_S,
) -> Snapshot:
    """Follow ``scan_id`` until its terminal snapshot, which is returned.

    Raises ``RemoteError`` for an unknown scan, a refused token, or a server that stays
    unreachable for ``reconnect_timeout_s``.
    """
    import aiohttp

    last: Cursor | None = None  # the stream and seq of the newest snapshot taken
    lost_since: float | None = None
    attempt = 0
    backoff = FIRST_BACKOFF_S
    loop = asyncio.get_running_loop()

    def take(snapshot: Any, authoritative: bool = False) -> Snapshot | None:
        nonlocal last
        if not isinstance(snapshot, dict):
            return None
        seq, epoch = snapshot.get("seq"), snapshot.get("epoch")
        terminal = snapshot.get("status") in TERMINAL_STATUSES
        if isinstance(seq, int):
            cursor = Cursor(epoch if isinstance(epoch, str) else None, seq)
            newer = last is None or cursor.epoch != last.epoch or seq > last.seq
            if not (authoritative or terminal or newer):
                return None
            if authoritative or newer:
                last = cursor
        reporter.snapshot(snapshot)
        return snapshot if terminal else None

    while True:
        try:
            try:
                snapshot = await _get_json(session, remote, f"/scan/progress/{scan_id}")
            except RemoteError as error:
                if error.exit_code != EXIT_USAGE:
                    raise
                # it was there when we started: a restarted server lost it
                raise RemoteError(f"scan {scan_id} is gone from {remote.base_url}") from None
            if (final := take(snapshot, authoritative=True)) is not None:
                return final
            url = remote.ws_url(scan_id, last)
            async with session.ws_connect(url, headers=remote.headers, heartbeat=30.0) as ws:
                lost_since, attempt, backoff = None, 0, FIRST_BACKOFF_S
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        if (final := take(_loads(message.data))) is not None:
                            return final
                    elif message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                        break
            # closed without the terminal snapshot (the server shutting down or gone):
            # resynchronise through REST
        except aiohttp.WSServerHandshakeError as error:
            if error.status in (401, 403, 404):
                raise RemoteError(
                    f"{remote.base_url} refused the WebSocket: {error.status} {error.message}"
                ) from None
        except (
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
            OSError,
            TimeoutError,
            _Unavailable,
        ) as error:
            log.debug("connection to %s lost: %s", remote.base_url, error)
        now = loop.time()
        if lost_since is None:
            lost_since = now
        elif now - lost_since > reconnect_timeout_s:
            raise RemoteError(
                f"lost {remote.base_url} for more than {reconnect_timeout_s:.0f} s; giving up"
            )
        attempt += 1
        reporter.reconnecting(remote.base_url, attempt)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_S)


async def _reachable(session: aiohttp.ClientSession, remote: Remote, scan_id: str) -> None:
    """Fail fast, with the reason, when the server cannot be used at all."""
    import aiohttp

    try:
        await _get_json(session, remote, f"/scan/progress/{scan_id}")
    except RemoteError as error:
        if error.exit_code == EXIT_USAGE:
            raise RemoteError(f"{remote.base_url} has no scan {scan_id}", EXIT_USAGE) from None
        raise
    except (aiohttp.ClientError, OSError, TimeoutError, _Unavailable) as error:
        raise RemoteError(f"cannot reach {remote.base_url}: {error}") from None


async def watch_until_done(
    session: aiohttp.ClientSession,
    remote: Remote,
    scan_id: str,
    reporter: Reporter,
    *,
    cancel_on_interrupt: bool,
) -> Snapshot | None:
    """Follow the scan; Ctrl-C cancels it on the server (``cancel_on_interrupt``) and waits
    for it to end, or just stops watching (returns None)."""
    import aiohttp

    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    following = asyncio.create_task(follow(session, remote, scan_id, reporter))
    waiting = asyncio.create_task(interrupted.wait())
    try:
        await asyncio.wait({following, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if following.done():
            return following.result()
        if not cancel_on_interrupt:
            return None
        try:
            async with session.post(
                f"{remote.base_url}/scan/cancel/{scan_id}", headers=remote.headers
            ) as response:
                await response.read()
        except (aiohttp.ClientError, OSError) as error:
            raise RemoteError(f"could not cancel scan {scan_id}: {error}") from None
        try:
            return await asyncio.wait_for(asyncio.shield(following), CANCEL_WAIT_S)
        except TimeoutError:
            return None
    finally:
        for task in (following, waiting):
            task.cancel()
        await asyncio.gather(following, waiting, return_exceptions=True)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)


def _session(remote: Remote) -> aiohttp.ClientSession:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=None)
    return aiohttp.ClientSession(timeout=timeout)


def _outcome_line(prefix: str, snapshot: Snapshot | None, scan_id: str) -> str:
    if snapshot is None:
        return f"{prefix}: stopped watching scan {scan_id}; it goes on on the server"
    status = snapshot.get("status")
    elapsed = float(snapshot.get("elapsed_seconds") or 0.0)
    text = f"{prefix}: scan {scan_id} {status} after {elapsed:.1f}s"
    if snapshot.get("error"):
        text += f": {snapshot['error']}"
    return text


def _exit_code(snapshot: Snapshot | None) -> int:
    if snapshot is None:
        return EXIT_CANCELLED
    return EXIT_BY_STATUS.get(str(snapshot.get("status")), EXIT_FAILED)


# -- technic watch ----------------------------------------------------------------------------


def add_watch_command(commands: argparse._SubParsersAction[Any]) -> None:
    watch = commands.add_parser(
        "watch",
        help="watch a scan running on a technic server",
        description="Draw a scan's live multi-stage view from its server's WebSocket. Exit "
        "status: 0 completed, 1 failed or interrupted, 130 cancelled.",
    )
    watch.add_argument("scan_id", metavar="SCAN_ID")
    watch.add_argument(
        "--server",
        metavar="URL",
        help="the technic server (env TECHNIC_SERVER, default http://127.0.0.1:$PORT or :8000)",
    )
    watch.add_argument("--token", help="API token of the server (env TECHNIC_API_TOKEN)")
    watch.add_argument("--no-progress", action="store_true", help="only the final line")
    watch.set_defaults(func=watch_command)


def watch_command(args: argparse.Namespace) -> int:
    try:
        remote = Remote.parse(args.server, args.token)
        scan_id = parse_scan_id(args.scan_id)
        reporter = Reporter(sys.stderr, quiet=args.no_progress)
        snapshot = asyncio.run(_watch(remote, scan_id, reporter))
    except RemoteError as error:
        print(f"technic watch: error: {error}", file=sys.stderr)
        return error.exit_code
    if snapshot is not None:
        reporter.finish(snapshot)
    print(_outcome_line("technic watch", snapshot, scan_id), file=sys.stderr)
    return _exit_code(snapshot)


async def _watch(remote: Remote, scan_id: str, reporter: Reporter) -> Snapshot | None:
    async with _session(remote) as session:
        await _reachable(session, remote, scan_id)
        return await watch_until_done(session, remote, scan_id, reporter, cancel_on_interrupt=False)


# -- technic scan --server ----------------------------------------------------------------------


def start_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /scan/start`` body for ``technic scan`` arguments (validated like a local
    scan, so the same defaults and the same error messages apply)."""
    from technic.server.requests import API_PROVIDERS, START_FIELDS

    for name, option in LOCAL_ONLY.items():
        value = getattr(args, name, None)
        if value not in (None, False) and not (name == "universe" and value == MARKET_UNIVERSE):
            raise RemoteError(f"{option} applies to a scan run here, not with --server", EXIT_USAGE)
    if args.provider not in API_PROVIDERS:
        raise RemoteError(
            f"--provider must be one of {', '.join(API_PROVIDERS)} with --server", EXIT_USAGE
        )
    try:
        config = scan_config(args)
    except (ValueError, argparse.ArgumentTypeError) as error:
        raise RemoteError(str(error), EXIT_USAGE) from None
    values = config.to_dict()
    return {key: values[key] for key in START_FIELDS if values.get(key) is not None}


def remote_scan_command(args: argparse.Namespace) -> int:
    from technic.server.views import performance_metrics

    try:
        remote = Remote.parse(args.server, args.token)
        body = start_body(args)
        reporter = Reporter(sys.stderr, quiet=args.no_progress)
        scan_id, snapshot, results = asyncio.run(_remote_scan(remote, body, reporter))
    except RemoteError as error:
        print(f"technic scan: error: {error}", file=sys.stderr)
        return error.exit_code
    if snapshot is not None:
        reporter.finish(snapshot)
    code = _exit_code(snapshot)
    if code != EXIT_OK or results is None:
        print(_outcome_line("technic scan", snapshot, scan_id), file=sys.stderr)
        return code
    metrics = {
        **performance_metrics(results.get("performance_metrics")),
        "stage_timings": results.get("stage_timings"),
    }
    if args.format == "json":
        document = {
            "scan_id": scan_id,
            "config": body,
            "results": results["results"],
            "metrics": metrics,
            "failures": results.get("failures") or [],
        }
    else:
        for key in ("symbols_scanned", "symbols_failed", "total_seconds"):
            metrics[key] = metrics.get(key) or 0
        document = {}
    write_output(format_results(results["results"], metrics, args.format, document), args.output)
    return EXIT_OK


async def _remote_scan(
    remote: Remote, body: dict[str, Any], reporter: Reporter
) -> tuple[str, Snapshot | None, dict[str, Any] | None]:
    import aiohttp

    async with _session(remote) as session:
        try:
            async with session.post(
                f"{remote.base_url}/scan/start", json=body, headers=remote.headers
            ) as response:
                answer = _loads(await response.read())
                status = response.status
        except (aiohttp.ClientError, OSError) as error:
            raise RemoteError(f"cannot reach {remote.base_url}: {error}") from None
        if status == 401:
            raise RemoteError(
                f"{remote.base_url} needs a token: pass --token or set TECHNIC_API_TOKEN"
            )
        if status >= 400 or not isinstance(answer, dict) or "scan_id" not in answer:
            error = answer if isinstance(answer, dict) else {}
            field = f"{error['field']}: " if error.get("field") else ""
            message = f"{field}{error.get('error', f'HTTP {status}')}"
            raise RemoteError(
                f"the server refused the scan: {message}",
                EXIT_USAGE if status == 400 else EXIT_FAILED,
            )
        scan_id = str(answer["scan_id"])
        print(
            f"technic scan: scan {scan_id} started; watch it at {remote.page_url(scan_id)}",
            file=sys.stderr,
        )
        snapshot = await watch_until_done(
            session, remote, scan_id, reporter, cancel_on_interrupt=True
        )
        results = None
        if snapshot is not None and snapshot.get("status") == "completed":
            try:
                results = await _all_results(session, remote, scan_id)
            except _Unavailable as error:
                raise RemoteError(
                    f"scan {scan_id} completed but its results cannot be read now ({error});"
                    f" fetch them later from {remote.base_url}/scan/results/{scan_id}"
                ) from None
        return scan_id, snapshot, results


async def _all_results(
    session: aiohttp.ClientSession, remote: Remote, scan_id: str
) -> dict[str, Any]:
    """The results body with every row, read page by page in rank order (a JSON page holds
    the server's page size of rows, its default)."""
    path = f"/scan/results/{scan_id}"
    first = await _get_json(session, remote, path)
    rows = list(first["results"])
    while len(rows) < first["total"]:
        page = await _get_json(session, remote, path, offset=len(rows))
        if not page["results"]:
            break
        rows.extend(page["results"])
    return {**first, "results": rows, "count": len(rows)}
