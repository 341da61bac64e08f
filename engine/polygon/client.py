"""HTTP to the Massive (Polygon.io) REST API: a shared rate limiter, bounded retries, and
daemon worker threads that run requests concurrently for a synchronous caller.

Why threads and ``http.client`` rather than aiohttp in a private event loop: the engine is
synchronous and the scan already runs in a thread of its own; a handful of threads, each
with one keep-alive connection, reach the paid plans' hundred requests a second (the rate
limiter, not the client, sets the pace), a slow response holds up only its own thread, and
cancelling is setting an event that every wait in here watches. Worker threads are daemons:
a request stuck in a slow socket never keeps ``technic scan`` from exiting after Ctrl-C.

The API key goes out only in the ``Authorization`` header, only to the configured host
(a ``next_url`` naming another host is followed on the configured one), and never into a
log line, an exception or a ``repr``: messages are built from paths and statuses, and the
provider's own error text is passed through ``redact`` before it is shown.
"""

from __future__ import annotations

import email.utils
import gzip
import http.client
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

log = logging.getLogger(__name__)

ASSUMED_LATENCY_S = 0.5
MAX_IN_FLIGHT = 32
MAX_RETRY_AFTER_S = 600.0
MAX_BACKOFF_S = 60.0
MESSAGE_LIMIT = 200
USER_AGENT = "technic (+https://github.com/technic)"


class Aborted(Exception):
    """The fetch was cancelled (or stopped by a refused key) while this request waited."""


class Refused(Exception):
    """401 or 403: the key is wrong, or its plan does not include what was asked."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class RequestFailed(Exception):
    """A request that could not be answered after its retries; the message says why."""


class RateLimiter:
    """A token bucket shared by every request of the process that uses the same key.

    ``burst`` tokens at most, refilled at ``requests_per_minute``. The default burst of one
    paces requests evenly (one every 12 s on the free plan): a burst of five would send
    nine requests in the first minute of a provider window that started before it, and
    an even pace makes the time a fetch takes exactly (requests - 1) x the interval, which
    is what the stage's ETA says from its first second. ``defer`` stops everyone for a
    while after a 429. Waits end at once when the caller's ``abort`` event is set.
    """

    def __init__(
        self,
        requests_per_minute: float,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if requests_per_minute <= 0 or burst < 1:
            raise ValueError("requests_per_minute must be > 0 and burst >= 1")
        self.interval_s = 60.0 / requests_per_minute
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._updated = clock()
        self._blocked_until = 0.0
        self._lock = threading.Lock()

    def acquire(self, abort: threading.Event) -> None:
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(
                    self._burst, self._tokens + (now - self._updated) / self.interval_s
                )
                self._updated = now
                wait_s = self._blocked_until - now
                if wait_s <= 0:
                    if self._tokens >= 1:
                        self._tokens -= 1
                        return
                    wait_s = (1 - self._tokens) * self.interval_s
            if abort.wait(min(wait_s, 1.0)):
                raise Aborted

    def defer(self, seconds: float) -> None:
        """Nobody starts a request for ``seconds`` (the provider said: too many)."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + seconds)


def redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` masked, cut to a readable length."""
    if secret:
        text = text.replace(secret, "***")
    return text[:MESSAGE_LIMIT]


@dataclass
class PolygonClient:
    """One API key on one host: the limiter every scan of this process shares, and GET.

    ``max_attempts`` bounds tries after a 5xx, a timeout or a broken connection;
    ``max_rate_limited`` bounds 429s in a row for one request (each one waits: the
    ``Retry-After`` the provider gives, else ``backoff_s`` doubled per try with jitter).
    """

    api_key: str = field(repr=False)
    base_url: str
    requests_per_minute: float
    timeout_s: float = 30.0
    max_attempts: int = 4
    max_rate_limited: int = 12
    backoff_s: float = 1.0
    limiter: RateLimiter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be http(s)://host[:port], got {self.base_url!r}")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self.limiter = RateLimiter(self.requests_per_minute)
        self._local = threading.local()

    @property
    def workers(self) -> int:
        """Threads enough to keep the rate with half-second answers, at most 32."""
        per_second = self.requests_per_minute / 60.0
        return max(1, min(MAX_IN_FLIGHT, math.ceil(per_second * ASSUMED_LATENCY_S) + 1))

    def target(self, path_or_url: str, params: Mapping[str, Any] | None = None) -> str:
        """The path and query to send: ``next_url`` is followed on the configured host."""
        parts = urlsplit(path_or_url)
        path = parts.path if parts.scheme else path_or_url.split("?", 1)[0]
        query = parts.query
        if params:
            query = "&".join(filter(None, (query, urlencode(params))))
        if not path.startswith(self._prefix + "/"):
            path = self._prefix + path
        return f"{path}?{query}" if query else path

    def get(
        self, path_or_url: str, params: Mapping[str, Any] | None, abort: threading.Event
    ) -> dict[str, Any]:
        """The JSON answer of one GET, after the limiter, 429 waits and bounded retries."""
        target = self.target(path_or_url, params)
        attempts = 0
        rate_limited = 0
        while True:
            self.limiter.acquire(abort)
            try:
                status, headers, body = self._send(target)
            except (OSError, http.client.HTTPException) as error:
                attempts += 1
                reason = f"connection failed ({type(error).__name__})"
                self._retry_or_fail(target, reason, attempts, abort)
                continue
            if status == 429:
                rate_limited += 1
                if rate_limited > self.max_rate_limited:
                    raise RequestFailed(f"rate limited (HTTP 429) {rate_limited} times in a row")
                wait_s = _retry_after_s(headers.get("retry-after"))
                if wait_s is None:
                    wait_s = self._backoff_s(rate_limited)
                log.debug("429 on %s: every request waits %.2f s", target, wait_s)
                self.limiter.defer(wait_s)
                continue
            if status in (401, 403):
                raise Refused(status, self._message(body) or http.client.responses.get(status, ""))
            if status >= 500 or status == 408:
                attempts += 1
                self._retry_or_fail(target, f"HTTP {status}", attempts, abort)
                continue
            if status != 200:
                detail = self._message(body)
                raise RequestFailed(f"HTTP {status}" + (f": {detail}" if detail else ""))
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                attempts += 1
                self._retry_or_fail(target, "an answer that is not JSON", attempts, abort)
                continue
            if not isinstance(data, dict):
                raise RequestFailed("an answer that is not a JSON object")
            return data

    def _retry_or_fail(
        self, target: str, reason: str, attempts: int, abort: threading.Event
    ) -> None:
        if attempts >= self.max_attempts:
            log.warning("giving up on %s: %s after %d attempts", target, reason, attempts)
            raise RequestFailed(f"{reason} after {attempts} attempts")
        wait_s = self._backoff_s(attempts)
        log.info("%s on %s; retrying in %.2f s", reason, target, wait_s)
        if abort.wait(wait_s):
            raise Aborted

    def _backoff_s(self, attempt: int) -> float:
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)

    def _message(self, body: bytes) -> str:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return ""
        if not isinstance(data, dict):
            return ""
        text = data.get("error") or data.get("message") or ""
        return redact(str(text), self.api_key)

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = (
                http.client.HTTPSConnection
                if self._scheme == "https"
                else (http.client.HTTPConnection)
            )
            connection = kind(self._host, self._port, timeout=self.timeout_s)
            self._local.connection = connection
        return connection

    def close_connection(self) -> None:
        """Close the calling thread's connection (a worker thread does as it ends)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _send(self, target: str) -> tuple[int, dict[str, str], bytes]:
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": "application/json",
            "Accept-Encoding": "gzip",
            "User-Agent": USER_AGENT,
        }
        # A kept-alive connection the server has closed fails on first use: that request
        # never reached the server, so it is sent again at once on a new connection.
        reused = getattr(self._local, "connection", None) is not None
        for attempt in (0, 1):
            connection = self._connection()
            try:
                connection.request("GET", target, headers=headers)
                response = connection.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close_connection()
                if reused and attempt == 0:
                    continue
                raise
            except (OSError, http.client.HTTPException):
                self.close_connection()
                raise
            if response.will_close:
                self.close_connection()
            found = {name.lower(): value for name, value in response.getheaders()}
            if found.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            return response.status, found, body
        raise AssertionError("unreachable")


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return min(max(when.timestamp() - time.time(), 0.0), MAX_RETRY_AFTER_S)


Outcome = Any


class Dispatcher:
    """Runs callables on ``workers`` daemon threads; outcomes come back to the caller's thread.

    The caller submits, then polls ``next_outcome`` with a short timeout so it can check
    for cancellation between outcomes. An exception raised by a callable is its outcome.
    ``close`` sets ``abort`` (every limiter wait and backoff in flight ends) and gives the
    threads a moment to close their connections.
    """

    def __init__(
        self,
        workers: int,
        abort: threading.Event,
        on_thread_exit: Callable[[], None] = lambda: None,
    ) -> None:
        self.abort = abort
        self._on_thread_exit = on_thread_exit
        self._tasks: queue.SimpleQueue[tuple[Any, Callable[[], Outcome]] | None] = (
            queue.SimpleQueue()
        )
        self._outcomes: queue.SimpleQueue[tuple[Any, Outcome]] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"polygon-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: Any, task: Callable[[], Outcome]) -> None:
        self._tasks.put((key, task))

    def next_outcome(self, timeout_s: float) -> tuple[Any, Outcome] | None:
        try:
            return self._outcomes.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self, wait_s: float) -> None:
        """Stop: waits and backoffs end at once; a thread still in a request gets up to
        ``wait_s`` (in all) to finish it and close its connection, then is left to it."""
        self.abort.set()
        for _ in self._threads:
            self._tasks.put(None)
        deadline = time.monotonic() + wait_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        try:
            self._serve()
        finally:
            self._on_thread_exit()

    def _serve(self) -> None:
        while True:
            item = self._tasks.get()
            if item is None:
                return
            key, task = item
            if self.abort.is_set():
                self._outcomes.put((key, Aborted()))
                continue
            try:
                outcome = task()
            except BaseException as error:  # handed to the caller, which decides
                outcome = error
            self._outcomes.put((key, outcome))
