"""Resume cursors: where a watcher of a scan's progress stream is, written ``EPOCH.SEQ``.

``seq`` numbers the snapshots of one scan, but only within one *stream* of it: a restarted
server (or a hub that lost a finished topic and rebuilt it from the database) numbers from
1 again. A bare seq from before a restart would then name a snapshot this stream never sent,
and a watcher resuming "after 82" from a stream now at 1 would be told there is nothing new
while its scan was in fact interrupted. So every stream gets an *epoch*, an opaque token
minted when the stream starts, and a cursor names both: the SSE ``id:`` field, the value a
client sends back as ``Last-Event-ID`` / ``?last_event_id=`` / the WebSocket's ``?since=``,
and the ``epoch`` and ``seq`` fields of every published snapshot.

How a stream treats a cursor (:meth:`server.hub.Hub.resume_seq`): it resumes after ``seq``
only if the cursor is its own (same epoch) and names a snapshot it has sent (``seq`` not
above its latest); any other cursor is foreign, and the watcher gets the current snapshot,
as a new watcher does. A bare ``SEQ`` (what clients sent before epochs existed) has no epoch
to compare, so it counts as the stream's own when the stream has sent that seq, and as
foreign otherwise: a restarted stream at seq 1 answers "82" with its current snapshot.

The fleet mode (several servers sharing progress through Redis) keeps this format: the
epoch there names the scan's Redis stream rather than one process's hub, so every instance
hands out, and accepts, the same cursors.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_CURSOR = re.compile(r"(?:([A-Za-z0-9_-]{1,64})\.)?([0-9]{1,18})")


@dataclass(frozen=True, slots=True)
class Cursor:
    """A resume point: the last ``seq`` a watcher has, and the stream (epoch) it came from.

    ``epoch`` is None for a bare seq, as clients sent before streams had epochs.
    """

    epoch: str | None
    seq: int

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """``EPOCH.SEQ`` or ``SEQ``; ``ValueError`` for anything else."""
        match = _CURSOR.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"must be a resume cursor EPOCH.SEQ or a seq, got {text!r}")
        return cls(match[1], int(match[2]))

    @staticmethod
    def new_epoch() -> str:
        """A fresh epoch: random, so a restarted process never reuses one (2^-32 odds)."""
        return secrets.token_hex(4)

    def __str__(self) -> str:
        return str(self.seq) if self.epoch is None else f"{self.epoch}.{self.seq}"
