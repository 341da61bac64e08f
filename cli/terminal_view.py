"""The live multi-stage view drawn on a terminal, as in the seed's Step 4.

``render`` is pure (snapshot in, lines out) so the local ``technic scan`` and a remote
watcher fed by WebSocket draw exactly the same thing. ``LiveView`` redraws those lines in
place on a TTY; on anything else it prints nothing and the log lines tell the story.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, TextIO

from technic.engine.progress import STAGE_UNITS, format_eta

STAGE_LABELS = {
    "universe_loading": "Universe Loading",
    "data_fetching": "Data Fetching",
    "symbol_scanning": "Symbol Scanning",
    "finalization": "Finalization",
}
STATUS_ICONS = {
    "completed": "✅",
    "running": "⏳",
    "pending": "⏸️",
    "failed": "❌",
    "skipped": "⏭️",
}
BAR_WIDTH = 30


def _bar(percent: float, width: int = BAR_WIDTH) -> str:
    filled = round(width * min(max(percent, 0.0), 100.0) / 100.0)
    return "█" * filled + "░" * (width - filled)


def _format_eta(seconds: float | None) -> str:
    text = format_eta(seconds)
    return f"ETA {text}" if text else "ETA --"


def _overall_text(snapshot: dict[str, Any]) -> tuple[float, str]:
    """The main bar's percent and its words. The bar follows ``time_progress`` (the share of
    the expected time done), which moves steadily; the seed's weighted sum of stage percents
    is not linear in time, so it is shown beside it, named. A snapshot from a server without
    ``time_progress`` has only the weighted sum: that is the bar then."""
    weighted = float(snapshot.get("overall_progress") or 0.0)
    if snapshot.get("time_progress") is None:
        return weighted, f"{weighted:5.1f}%"
    timed = float(snapshot["time_progress"])
    return timed, f"{timed:5.1f}% of time  stages {weighted:.1f}% weighted"


def render(snapshot: dict[str, Any]) -> list[str]:
    """Lines for one snapshot: an overall bar, one line per stage, the message."""
    percent, words = _overall_text(snapshot)
    status = snapshot.get("status", "pending")
    eta = snapshot.get("overall_eta_formatted")
    elapsed = float(snapshot.get("elapsed_seconds") or 0.0)
    lines = [
        f"Scan {status:<10} {_bar(percent)} {words}  "
        f"{'ETA ' + eta if eta else 'ETA --'}  elapsed {elapsed:.1f}s"
    ]
    for name, stage in (snapshot.get("stages") or {}).items():
        icon = STATUS_ICONS.get(stage.get("status", "pending"), " ")
        label = STAGE_LABELS.get(name, name)
        weight = round(100 * float(stage.get("weight", 0)))
        parts = [f"  {icon} {label:<17} ({weight:>2}%)", f"{stage.get('status', ''):<9}"]
        parts.append(f"{float(stage.get('progress') or 0):5.1f}%")
        total = stage.get("total")
        if total:
            parts.append(
                f"{int(stage.get('current') or 0)}/{int(total)} "
                f"{stage.get('unit') or STAGE_UNITS.get(name, '')}"
            )
        if stage.get("throughput"):
            parts.append(f"{stage['throughput']:.1f}/s")
        if stage.get("status") == "running":
            parts.append(_format_eta(stage.get("eta")))
        elif stage.get("duration") is not None and stage.get("status") != "pending":
            parts.append(f"{stage['duration']:.2f}s")
        lines.append("  ".join(parts))
    if snapshot.get("message"):
        lines.append(f"  {snapshot['message']}")
    return lines


class LiveView:
    """Redraws the view in place on a TTY; a no-op elsewhere. Thread-safe."""

    def __init__(self, stream: TextIO = sys.stderr, *, enabled: bool | None = None) -> None:
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self._lines_drawn = 0
        self._lock = threading.Lock()

    def update(self, snapshot: dict[str, Any]) -> None:
        if not self.enabled:
            return
        lines = render(snapshot)
        with self._lock:
            if self._lines_drawn:
                self.stream.write(f"\x1b[{self._lines_drawn}F")
            for line in lines:
                self.stream.write(f"\x1b[2K{line}\n")
            self.stream.flush()
            self._lines_drawn = len(lines)
