"""Send a batch of requests concurrently and count them as the stage's units.

Both the market universe and the bar fetch go through ``RequestBatch``: requests run on the
client's daemon threads, answers are handled one at a time in the scan's own thread (so
handlers need no locks), every answer or failure is one unit done, and a ``next_url``
adds one unit to the plan. The scan's cancel is checked at least every tenth of a second;
cancelling, or a refused key, sets the batch's abort event, which ends every limiter wait
and backoff at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from technic.engine.errors import ProviderAccessDenied
from technic.engine.polygon.client import Aborted, Dispatcher, PolygonClient, Refused, RequestFailed
from technic.engine.providers import StageProgress

POLL_S = 0.1
# After the last answer, a cancel or a refused key: how long threads still in a request
# may take to finish it (cancelling must take effect within a second).
CLOSE_WAIT_S = 0.5


@dataclass(frozen=True)
class Request:
    key: Hashable
    path: str
    params: Mapping[str, Any] | None = None


def access_denied(refused: Refused) -> ProviderAccessDenied:
    """One clear message that names the setting (never its value)."""
    return ProviderAccessDenied(
        f"the Massive (Polygon.io) API refused the request (HTTP {refused.status}: "
        f"{refused.message or 'no reason given'}); check POLYGON_API_KEY, and that its plan "
        "includes this data"
    )


class RequestBatch:
    """Units of a stage: ``planned`` in all so far, ``done`` of them."""

    def __init__(self, client: PolygonClient, progress: StageProgress, *, done: int = 0) -> None:
        self.client = client
        self.progress = progress
        self.done = done
        self.planned = done
        self.detail = ""

    def plan(self, units: int, detail: str) -> None:
        """``units`` more requests are about to be sent for ``detail``."""
        self.planned += units
        self.detail = detail
        self._announce()

    def run(
        self,
        requests: Iterable[Request],
        on_answer: Callable[[Hashable, dict[str, Any]], str | None],
        on_failure: Callable[[Hashable, str], None],
        on_idle: Callable[[], None] = lambda: None,
    ) -> None:
        """Send ``requests`` (already counted by ``plan``). ``on_answer`` gets each JSON
        answer and returns the ``next_url`` to follow, if any; ``on_failure`` gets the
        reason a request failed after its retries; ``on_idle`` runs between answers."""
        abort = threading.Event()
        dispatcher = Dispatcher(self.client.workers, abort, self.client.close_connection)
        pending = 0

        def send(key: Hashable, path: str, params: Mapping[str, Any] | None) -> None:
            nonlocal pending
            dispatcher.submit(key, lambda: self.client.get(path, params, abort))
            pending += 1

        try:
            for request in requests:
                send(request.key, request.path, request.params)
            while pending:
                self.progress.check_cancel()
                item = dispatcher.next_outcome(POLL_S)
                if item is None:
                    on_idle()
                    continue
                pending -= 1
                key, outcome = item
                if isinstance(outcome, Refused):
                    raise access_denied(outcome)
                if isinstance(outcome, RequestFailed):
                    on_failure(key, str(outcome))
                elif isinstance(outcome, Aborted):
                    self.progress.check_cancel()
                    continue
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    next_url = on_answer(key, outcome)
                    if next_url:
                        self.planned += 1
                        self._announce()
                        send(key, next_url, None)
                self.done += 1
                self.progress.advance(1)
                on_idle()
        finally:
            dispatcher.close(CLOSE_WAIT_S)

    def _announce(self) -> None:
        self.progress.plan(
            self.planned,
            unit="requests",
            seconds_per_unit=self.client.limiter.interval_s,
            detail=self.detail,
        )
