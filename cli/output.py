"""How ``technic scan`` prints its results, whether the scan ran here or on a server."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from technic.server.views import results_csv

TABLE_COLUMNS = (
    ("rank", "#", 4, "{:>4}"),
    ("symbol", "Symbol", 7, "{:<7}"),
    ("sector", "Sector", 24, "{:<24.24}"),
    ("tech_rating", "Rating", 6, "{:>6.1f}"),
    ("signal", "Signal", 11, "{:<11}"),
    ("close", "Close", 9, "{:>9.2f}"),
    ("rsi14", "RSI", 5, "{:>5.1f}"),
    ("ret_21d", "21d", 7, "{:>7.1%}"),
    ("entry", "Entry", 9, "{:>9.2f}"),
    ("stop", "Stop", 9, "{:>9.2f}"),
    ("target", "Target", 9, "{:>9.2f}"),
    ("position_size", "Shares", 7, "{:>7.0f}"),
)


def format_results(
    rows: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    output_format: str,
    document: Mapping[str, Any],
) -> str:
    """Ranked rows as a table or CSV, or ``document`` as indented JSON."""
    if output_format == "json":
        return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
    if output_format == "csv":
        return results_csv(rows)
    lines = [" ".join(f"{title:>{width}}" for _, title, width, _ in TABLE_COLUMNS)]
    for row in rows:
        cells = [
            fmt.format(row[key]) if row.get(key) is not None else " " * width
            for key, _, width, fmt in TABLE_COLUMNS
        ]
        lines.append(" ".join(cells))
    lines.append(
        f"{len(rows)} candidates, {metrics['symbols_scanned']} scanned, "
        f"{metrics['symbols_failed']} failed, {metrics['total_seconds']:.2f}s"
    )
    return "\n".join(lines) + "\n"


def write_output(text: str, path: str | None) -> None:
    """To the file ``--output`` names, or to stdout."""
    if path:
        Path(path).write_text(text)
    else:
        sys.stdout.write(text)
