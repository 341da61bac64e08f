"""How far back a history question looks: ``30m``, ``12h``, ``7d`` or ``2w``.

One parser serves the API's ``since`` and the CLI's ``--since``, so both accept the same
words and refuse the same nonsense. The window is bounded (``MAX_WINDOW``): "the last
999999 weeks" reaches before year 1, where date arithmetic overflows, and no stored history
is that old anyway.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

from technic.storage.errors import InvalidInput

MAX_WINDOW: Final = timedelta(days=3660)
_WINDOW = re.compile(r"^\s*(\d{1,9})\s*([mhdw])\s*$", re.ASCII)
_UNIT_SECONDS: Final = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_window(text: str | None, *, field: str = "since") -> timedelta:
    """The window a duration word names; ``InvalidInput`` naming ``field`` otherwise."""
    match = _WINDOW.match(text or "")
    if match is None or int(match.group(1)) == 0:
        raise InvalidInput(field, f"must be a duration like 30m, 12h, 7d or 2w, got {text!r}")
    # Compared as a number of seconds: a timedelta of 999999999 weeks cannot even be built.
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_WINDOW.total_seconds():
        raise InvalidInput(field, f"must be at most {MAX_WINDOW.days}d, got {text!r}")
    return timedelta(seconds=seconds)
