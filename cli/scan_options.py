"""The options of ``technic scan`` and the scan they describe.

One reading of the arguments serves a scan run here and one sent to a server with
``--server``, so both apply the same defaults and refuse the same mistakes with the same words.
"""

from __future__ import annotations

import argparse
import datetime as dt

from technic.engine.scan_config import PROVIDER_ALIASES, PROVIDERS, TRADE_STYLES, ScanConfig

# ``--universe market``: the active US common stocks the polygon provider lists.
MARKET_UNIVERSE = "market"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a date as YYYY-MM-DD, got {text!r}") from None


def add_scan_arguments(scan: argparse.ArgumentParser) -> None:
    """Every ``technic scan`` option; a local scan and ``--server`` read the same ones."""
    scan.add_argument("--provider", choices=(*PROVIDERS, *PROVIDER_ALIASES), default="sample")
    scan.add_argument("--data-dir", help="directory of per-symbol CSV files (csv provider)")
    scan.add_argument(
        "--universe",
        help="universe CSV file (symbol/ticker, name, sector, ...), or 'market' (polygon: "
        "every active US common stock)",
    )
    scan.add_argument("--symbols", type=positive_int, help="synthetic provider: symbols")
    scan.add_argument("--tickers", nargs="+", metavar="SYMBOL", help="scan only these")
    scan.add_argument("--bars", type=positive_int, default=504, help="synthetic: bars each")
    scan.add_argument("--seed", type=int, default=7, help="synthetic: random seed")
    scan.add_argument("--as-of", type=date, help="rate as of this date (YYYY-MM-DD)")
    scan.add_argument("--lookback", type=positive_int, default=504, help="bars of history")
    scan.add_argument("--sectors", nargs="+", metavar="SECTOR")
    scan.add_argument("--industries", nargs="+", metavar="INDUSTRY")
    scan.add_argument("--max-symbols", type=positive_int)
    scan.add_argument("--min-tech-rating", type=number, default=0.0)
    scan.add_argument("--trade-style", choices=TRADE_STYLES, default="swing")
    scan.add_argument("--account-size", type=number, default=10_000.0)
    scan.add_argument("--risk-pct", type=number, default=1.0)
    scan.add_argument("--target-rr", type=number, default=2.0)
    scan.add_argument("--adjusted", action="store_true", help="csv: use Adj Close")
    scan.add_argument("--workers", type=int, help="worker processes (0: scan in-process)")
    scan.add_argument("--no-cache", action="store_true", help="do not use the block cache")
    scan.add_argument("--format", choices=("table", "json", "csv"), default="table")
    scan.add_argument("--output", help="write the results here instead of stdout")
    scan.add_argument("--no-progress", action="store_true", help="no live view on stderr")
    scan.add_argument(
        "--server",
        metavar="URL",
        help="run the scan on this technic server and watch it here",
    )
    scan.add_argument("--token", help="API token for --server (env TECHNIC_API_TOKEN)")


def scan_config(args: argparse.Namespace) -> ScanConfig:
    """The scan the arguments ask for; ``ValueError`` (or argparse's) naming what is wrong."""
    if args.symbols is not None and args.provider != "synthetic":
        raise argparse.ArgumentTypeError("--symbols applies to --provider synthetic only")
    max_symbols = args.max_symbols
    if args.provider == "synthetic":
        max_symbols = min(args.symbols or 1000, args.max_symbols or args.symbols or 1000)
    return ScanConfig(
        max_symbols=max_symbols or 6000,
        min_tech_rating=args.min_tech_rating,
        sectors=tuple(args.sectors) if args.sectors else None,
        industries=tuple(args.industries) if args.industries else None,
        symbols=tuple(args.tickers) if args.tickers else None,
        as_of=args.as_of,
        lookback_bars=args.lookback,
        trade_style=args.trade_style,
        account_size=args.account_size,
        risk_pct=args.risk_pct,
        target_rr=args.target_rr,
        provider=args.provider,
        data_dir=args.data_dir,
        universe_file=None if args.universe == MARKET_UNIVERSE else args.universe,
        universe="market" if args.universe == MARKET_UNIVERSE else "bundled",
        bars=args.bars,
        seed=args.seed,
        adjusted=args.adjusted,
    )
