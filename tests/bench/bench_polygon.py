"""Polygon fetch benchmark: requests/s achieved against the configured rate, and how right
the fetch stage's ETA is, against the stand-in of the API on this machine.

Run: ``.venv/bin/python tests/bench/bench_polygon.py [--rates 600,6000] [--latency-ms 40]``

For each configured rate (requests per minute) and each plan — 50 symbols per symbol
(50 requests) and the 504-symbol universe per grouped day (504 requests) — it scans from an
empty bar store and prints:

* requests sent (429s included) and the achieved rate: requests after the first, over
  the time from the first to the last arrival at the stand-in, against the configured one;
* the most requests that arrived in any window of 100 intervals (the limiter allows 100,
  plus one: the bucket holds one token; a few more can arrive when requests that got
  their token together are delayed unequally on the way);
* the fetch stage's ETA when the plan is known (its start) and at 10 % of the stage,
  against the time the stage then really took: error = (ETA - actual) / actual.

``--every-nth-429 N`` makes the stand-in answer 429 to every N-th request (no Retry-After).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from technic.engine.polygon.client import PolygonClient
from technic.engine.polygon.source import PolygonSource
from technic.engine.scan import run_scan
from technic.engine.scan_config import ScanConfig

from tests.polygon_standin import StandIn

KEY = "pk_BENCH_key"
AS_OF = dt.date(2017, 8, 11)
PLANS = {"per-symbol": 50, "per-day": 504}
WINDOW_INTERVALS = 100


def run(standin: StandIn, rate: float, symbols: int) -> dict[str, Any]:
    standin.reset_log()
    timeline: list[tuple[float, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as scratch:
        source = PolygonSource(PolygonClient(KEY, standin.url, rate), Path(scratch) / "bars")
        config = ScanConfig(provider="polygon", as_of=AS_OF, max_symbols=symbols)
        run_scan(
            config,
            polygon=source,
            on_progress=lambda s: timeline.append((time.monotonic(), s)),
            progress_interval_s=0,
        )
    fetching = [(t, s) for t, s in timeline if s["current_stage"] == "data_fetching"]
    end = next(t for t, s in fetching if s["stages"]["data_fetching"]["status"] == "completed")
    planned = next((t, s) for t, s in fetching if "requests)" in s["message"])
    total = planned[1]["stages"]["data_fetching"]["total"]
    tenth = next(
        (t, s) for t, s in fetching if s["stages"]["data_fetching"]["current"] >= total / 10
    )
    arrivals = [r.at for r in standin.bar_requests()]
    interval = 60.0 / rate
    window = WINDOW_INTERVALS * interval
    densest = max(sum(1 for b in arrivals if a <= b < a + window) for a in arrivals)
    span = arrivals[-1] - arrivals[0]
    return {
        "requests": len(arrivals),
        "limited": sum(r.status == 429 for r in standin.bar_requests()),
        "achieved": (len(arrivals) - 1) / span * 60 if span > 0 else float("nan"),
        "densest": densest,
        "stage_s": end - planned[0],
        "eta_start": planned[1]["stage_eta"],
        "eta_start_error": (planned[1]["stage_eta"] - (end - planned[0])) / (end - planned[0]),
        "eta_10": tenth[1]["stage_eta"],
        "eta_10_error": (tenth[1]["stage_eta"] - (end - tenth[0])) / (end - tenth[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="600,6000", help="requests per minute, comma-separated")
    parser.add_argument("--latency-ms", type=float, default=40.0, help="stand-in answer delay")
    parser.add_argument("--every-nth-429", type=int, default=None)
    parser.add_argument("--plans", default=",".join(PLANS))
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}; stand-in latency "
        f"{args.latency_ms:.0f} ms"
        + (f", 429 every {args.every_nth_429}th request" if args.every_nth_429 else "")
    )
    header = (
        f"{'plan':<11}{'rate/min':>9}{'requests':>9}{'429s':>6}{'achieved/min':>13}"
        f"{'densest':>8}{'stage s':>9}{'ETA@start':>10}{'err':>7}{'ETA@10%':>9}{'err':>7}"
    )
    print(header)
    with StandIn(KEY) as standin:
        standin.faults.latency_s = args.latency_ms / 1000
        standin.faults.every_nth_429 = args.every_nth_429
        for rate in (float(r) for r in args.rates.split(",")):
            for plan in args.plans.split(","):
                got = run(standin, rate, PLANS[plan])
                print(
                    f"{plan:<11}{rate:>9.0f}{got['requests']:>9}{got['limited']:>6}"
                    f"{got['achieved']:>13.0f}{got['densest']:>5}/{WINDOW_INTERVALS:<2}"
                    f"{got['stage_s']:>9.2f}{got['eta_start']:>10.2f}"
                    f"{got['eta_start_error']:>+7.1%}{got['eta_10']:>9.2f}"
                    f"{got['eta_10_error']:>+7.1%}"
                )


if __name__ == "__main__":
    main()
