"""Repository calls against a real PostgreSQL: scans, the state machines, stages, results,
failures, listing, and hostile filter values."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from technic.storage import (
    RESULT_SORTS,
    SCAN_STATUSES,
    SCAN_TRANSITIONS,
    SIGNALS,
    STAGE_STATUSES,
    STAGE_TRANSITIONS,
    STAGES,
    Failure,
    IllegalTransition,
    InvalidInput,
    Repository,
    Scan,
    ScanNotFound,
)
from technic.storage.repository import EXPORT_BATCH_ROWS

pytestmark = pytest.mark.asyncio(loop_scope="session")

INJECTIONS = (
    "tech_rating; DROP TABLE scans",
    "' OR 1=1 --",
    "rank DESC; DELETE FROM scan_results --",
    "1); DROP TABLE scan_results; --",
    'symbol" ; DROP TABLE scans; --',
    "$1",
    "\x00",
)

NUMBER_KEYS = (
    *("close", "tech_rating", "trend_score", "momentum_score", "volume_score"),
    *("volatility_score", "oscillator_score", "breakout_score", "sma20", "sma50", "sma200"),
    *("ema12", "ema26", "rsi14", "macd", "macd_signal", "macd_hist", "atr14", "atr_pct"),
    *("adx14", "bb_upper", "bb_middle", "bb_lower", "ret_1d", "ret_5d", "ret_21d"),
    *("rel_volume", "dollar_volume_20d", "high_52w", "pct_from_52w_high", "entry", "stop"),
    *("target", "reward_risk", "position_size"),
)
SECTORS = ("Technology", "Energy", "Health Care", "Financials", "Utilities")


def make_rows(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """Result rows shaped like the engine's, best first, with some indicators missing."""
    rng = random.Random(seed)
    ratings = sorted((rng.uniform(0, 100) for _ in range(n)), reverse=True)
    rows = []
    for i, rating in enumerate(ratings):
        row: dict[str, Any] = {
            "symbol": f"S{i:05d}",
            "name": f"Company {i} \"quoted\" \\ 'single' ünïcode",
            "sector": SECTORS[rng.randrange(len(SECTORS))],
            "industry": "Industry",
            "as_of": "2017-08-11",
            "signal": SIGNALS[min(4, int((100 - rating) // 20))],
        }
        for key in NUMBER_KEYS:
            row[key] = rng.choice((rng.gauss(0, 1e6), rng.random(), -rng.random() * 1e-9))
        row["tech_rating"] = rating
        row["close"] = round(rng.uniform(1, 500), 2)
        if i % 7 == 3:  # too little history: these indicators are None
            row["rsi14"] = None
            row["sma200"] = None
            row["reward_risk"] = None
        if i % 11 == 5:
            row["rel_volume"] = rows[-1]["rel_volume"] if rows else 1.0  # ties, broken by rank
        rows.append(row)
    return rows


async def drive(repo: Repository, status: str) -> Scan:
    """A new scan brought to ``status`` through legal moves."""
    scan = await repo.create_scan(uuid4(), {"max_symbols": 10})
    path = {
        "pending": [],
        "running": ["running"],
        "completed": ["running", "completed"],
        "failed": ["failed"],
        "cancelled": ["cancelled"],
        "interrupted": ["running", "interrupted"],
    }[status]
    for step in path:
        scan = await repo.transition(scan.id, step)
    assert scan.status == status
    return scan


# ---------------------------------------------------------------------------- scans


async def test_create_and_get_scan(module_repository: Repository) -> None:
    repo = module_repository
    config = {"max_symbols": 500, "sectors": ["Energy"], "nested": {"a": [1, 2.5, None]}}
    scan = await repo.create_scan(uuid4(), config, universe_size=500, owner="host-a")
    assert scan.status == "pending"
    assert [s.stage for s in scan.stages] == list(STAGES)
    fetched = await repo.get_scan(scan.id)
    assert fetched is not None
    assert fetched.config == config
    assert fetched.universe_size == 500 and fetched.owner == "host-a"
    assert fetched.started_at is None and fetched.finished_at is None
    assert fetched.result_count == 0 and fetched.duration_s is None
    assert [s.stage for s in fetched.stages] == list(STAGES)
    assert all(s.status == "pending" for s in fetched.stages)
    assert await repo.get_scan(str(scan.id)) == fetched


async def test_create_scan_rejects_bad_input(module_repository: Repository) -> None:
    repo = module_repository
    scan = await repo.create_scan(uuid4(), {})
    with pytest.raises(InvalidInput, match="already exists"):
        await repo.create_scan(scan.id, {})
    with pytest.raises(InvalidInput, match="config"):
        await repo.create_scan(uuid4(), {"when": object()})
    with pytest.raises(InvalidInput, match="config"):
        await repo.create_scan(uuid4(), ["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="universe_size"):
        await repo.create_scan(uuid4(), {}, universe_size=-1)
    with pytest.raises(InvalidInput, match="scan_id"):
        await repo.create_scan("not-a-uuid", {})  # type: ignore[arg-type]


@pytest.mark.parametrize("scan_id", [uuid4(), str(uuid4()), "nope", "", *INJECTIONS, 42, None])
async def test_unknown_scan_reads_are_none(module_repository: Repository, scan_id: Any) -> None:
    repo = module_repository
    await repo.create_scan(uuid4(), {})
    assert await repo.get_scan(scan_id) is None
    assert await repo.fetch_results(scan_id) is None
    assert await repo.fetch_failures(scan_id) is None


@pytest.mark.parametrize("scan_id", [uuid4(), "' OR 1=1 --"])
async def test_unknown_scan_writes_raise(module_repository: Repository, scan_id: Any) -> None:
    repo = module_repository
    with pytest.raises(ScanNotFound):
        await repo.transition(scan_id, "running")
    with pytest.raises(ScanNotFound):
        await repo.update_scan(scan_id, universe_size=1)
    with pytest.raises(ScanNotFound):
        await repo.start_stage(scan_id, "universe_loading")
    with pytest.raises(ScanNotFound):
        await repo.finish_stage(scan_id, "universe_loading", status="skipped")
    with pytest.raises(ScanNotFound):
        await repo.save_results(scan_id, make_rows(3))
    with pytest.raises(ScanNotFound):
        await repo.save_failures(scan_id, [Failure("X", "no data")])
    assert isinstance(ScanNotFound(scan_id), LookupError)


# --------------------------------------------------------------- scan state machine


@pytest.mark.parametrize(
    ("current", "target"), list(itertools.product(SCAN_STATUSES, SCAN_STATUSES))
)
async def test_scan_state_machine(module_repository: Repository, current: str, target: str) -> None:
    repo = module_repository
    scan = await drive(repo, current)
    if target in SCAN_TRANSITIONS[current]:  # type: ignore[index]
        moved = await repo.transition(scan.id, target)  # type: ignore[arg-type]
        assert moved.status == target
        if target == "running":
            assert moved.started_at is not None and moved.finished_at is None
        else:
            assert moved.finished_at is not None
            assert moved.started_at is None or moved.finished_at >= moved.started_at
    else:
        with pytest.raises(IllegalTransition) as caught:
            await repo.transition(scan.id, target)  # type: ignore[arg-type]
        assert caught.value.current == current and caught.value.requested == target
        unchanged = await repo.get_scan(scan.id)
        assert unchanged is not None and unchanged.status == current


async def test_every_status_is_covered() -> None:
    assert set(SCAN_TRANSITIONS) == set(SCAN_STATUSES)
    assert set(STAGE_TRANSITIONS) == set(STAGE_STATUSES)
    terminal = {s for s, targets in SCAN_TRANSITIONS.items() if not targets}
    assert terminal == {"completed", "failed", "cancelled", "interrupted"}


@pytest.mark.parametrize("status", ["done", "RUNNING", "", *INJECTIONS])
async def test_transition_rejects_unknown_status(
    module_repository: Repository, status: str
) -> None:
    scan = await module_repository.create_scan(uuid4(), {})
    with pytest.raises(InvalidInput):
        await module_repository.transition(scan.id, status)  # type: ignore[arg-type]


async def test_transition_stores_outcome(module_repository: Repository) -> None:
    repo = module_repository
    scan = await drive(repo, "running")
    metrics = {
        "total_seconds": 12.5,
        "symbols_per_second": 40.0,
        "symbols_scanned": 498,
        "symbols_failed": 2,
        "stage_timings": {"universe_loading": 0.1, "symbol_scanning": 10.0},
    }
    done = await repo.transition(scan.id, "completed", metrics=metrics, universe_size=500)
    assert done.metrics == metrics
    assert (done.symbols_scanned, done.symbols_failed, done.universe_size) == (498, 2, 500)
    assert done.duration_s is not None and done.duration_s >= 0
    failed = await drive(repo, "running")
    failed = await repo.transition(failed.id, "failed", error="provider down")
    assert failed.error == "provider down" and failed.metrics is None


async def test_racing_transitions_have_one_winner(module_repository: Repository) -> None:
    repo = module_repository
    scan = await drive(repo, "running")
    outcomes = await asyncio.gather(
        repo.transition(scan.id, "completed"),
        repo.transition(scan.id, "cancelled"),
        repo.transition(scan.id, "failed"),
        return_exceptions=True,
    )
    winners = [o for o in outcomes if isinstance(o, Scan)]
    assert len(winners) == 1
    assert all(isinstance(o, IllegalTransition) for o in outcomes if o not in winners)
    stored = await repo.get_scan(scan.id)
    assert stored is not None and stored.status == winners[0].status


async def test_update_scan(module_repository: Repository) -> None:
    repo = module_repository
    scan = await drive(repo, "running")
    updated = await repo.update_scan(scan.id, universe_size=1234, metrics={"symbols_scanned": 7})
    assert updated.universe_size == 1234 and updated.symbols_scanned == 7
    assert updated.updated_at >= scan.updated_at
    with pytest.raises(InvalidInput):
        await repo.update_scan(scan.id, symbols_failed=True)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        await repo.update_scan(scan.id, universe_size=2**40)


# --------------------------------------------------------------------------- stages


async def bring_stage(repo: Repository, scan_id: UUID, status: str) -> None:
    stage = "data_fetching"
    if status in ("running", "completed", "failed"):
        await repo.start_stage(scan_id, stage)
    if status in ("completed", "failed", "skipped"):
        await repo.finish_stage(scan_id, stage, status=status)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("current", "target"),
    list(itertools.product(STAGE_STATUSES, ("running", "completed", "failed", "skipped"))),
)
async def test_stage_state_machine(
    module_repository: Repository, current: str, target: str
) -> None:
    repo = module_repository
    scan = await drive(repo, "running")
    await bring_stage(repo, scan.id, current)

    async def move() -> Any:
        if target == "running":
            return await repo.start_stage(scan.id, "data_fetching")
        return await repo.finish_stage(scan.id, "data_fetching", status=target)  # type: ignore[arg-type]

    if target in STAGE_TRANSITIONS[current]:  # type: ignore[index]
        timing = await move()
        assert timing.status == target
    else:
        with pytest.raises(IllegalTransition) as caught:
            await move()
        assert caught.value.current == current


async def test_stage_timing_figures(module_repository: Repository) -> None:
    repo = module_repository
    scan = await drive(repo, "running")
    started = await repo.start_stage(scan.id, "universe_loading", units_total=500)
    assert started.status == "running" and started.started_at is not None
    assert started.units_total == 500 and started.units_done == 0
    done = await repo.finish_stage(scan.id, "universe_loading", units_done=500)
    assert done.status == "completed" and done.finished_at is not None
    assert done.duration_s == pytest.approx((done.finished_at - started.started_at).total_seconds())
    assert done.throughput == pytest.approx(500 / done.duration_s)

    t0 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    await repo.start_stage(scan.id, "data_fetching", started_at=t0, units_total=400)
    timed = await repo.finish_stage(
        scan.id, "data_fetching", units_done=400, finished_at=t0 + timedelta(seconds=8)
    )
    assert timed.duration_s == 8.0 and timed.throughput == 50.0 and timed.units_total == 400

    await repo.start_stage(scan.id, "symbol_scanning", started_at=t0)
    measured = await repo.finish_stage(
        scan.id, "symbol_scanning", units_done=390, duration_s=2.5, finished_at=t0, tail_s=0.5
    )
    assert measured.duration_s == 2.5 and measured.throughput == 156.0
    assert measured.tail_s == 0.5 and timed.tail_s is None

    skipped = await repo.finish_stage(scan.id, "finalization", status="skipped")
    assert skipped.duration_s is None and skipped.throughput is None

    stored = await repo.get_scan(scan.id)
    assert stored is not None
    assert [s.status for s in stored.stages] == ["completed", "completed", "completed", "skipped"]
    assert stored.stages[1] == timed


async def test_stage_input_checks(module_repository: Repository) -> None:
    repo = module_repository
    scan = await drive(repo, "running")
    for stage in ("loading", *INJECTIONS):
        with pytest.raises(InvalidInput, match="stage"):
            await repo.start_stage(scan.id, stage)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="started_at"):
        await repo.start_stage(scan.id, "universe_loading", started_at=datetime(2024, 1, 1))
    await repo.start_stage(scan.id, "universe_loading")
    with pytest.raises(InvalidInput, match="status"):
        await repo.finish_stage(scan.id, "universe_loading", status="running")
    with pytest.raises(InvalidInput, match="duration_s"):
        await repo.finish_stage(scan.id, "universe_loading", duration_s=-1.0)
    with pytest.raises(InvalidInput, match="duration_s"):
        await repo.finish_stage(scan.id, "universe_loading", duration_s=math.nan)
    with pytest.raises(InvalidInput, match="units_done"):
        await repo.finish_stage(scan.id, "universe_loading", units_done=-5)
    for tail in (-0.1, math.inf, "2"):
        with pytest.raises(InvalidInput, match="tail_s"):
            await repo.finish_stage(scan.id, "universe_loading", tail_s=tail)  # type: ignore[arg-type]
    # a tail longer than the stage (clocks of two measurements) is cut to the stage
    clipped = await repo.finish_stage(scan.id, "universe_loading", duration_s=1.0, tail_s=3.0)
    assert clipped.tail_s == 1.0


# -------------------------------------------------------------------------- results


async def test_ten_thousand_results_round_trip_exactly(module_repository: Repository) -> None:
    repo = module_repository
    scan = await drive(repo, "running")
    rows = make_rows(10_000)
    assert await repo.save_results(scan.id, rows) == 10_000
    fetched: list[dict[str, Any]] = []
    ranks: list[int] = []
    cursor = None
    while True:
        page = await repo.fetch_results(scan.id, limit=1000, cursor=cursor)
        assert page is not None and page.total == 10_000
        fetched += page.rows
        ranks += page.ranks
        cursor = page.next_cursor
        if cursor is None:
            break
    assert ranks == list(range(1, 10_001))
    assert fetched == rows  # every key and every float bit-for-bit
    assert all(list(a) == list(b) for a, b in zip(fetched[:50], rows[:50], strict=True))
    stored = await repo.get_scan(scan.id)
    assert stored is not None and stored.result_count == 10_000


async def test_save_results_replaces_and_is_atomic(module_repository: Repository) -> None:
    repo = module_repository
    scan = await drive(repo, "running")
    first = make_rows(50, seed=2)
    await repo.save_results(scan.id, first)
    second = make_rows(20, seed=3)
    await repo.save_results(scan.id, second)
    page = await repo.fetch_results(scan.id, limit=100)
    assert page is not None and page.rows == second and page.total == 20

    duplicate = [*make_rows(10, seed=4), make_rows(1, seed=4)[0]]
    with pytest.raises(InvalidInput, match="more than once"):
        await repo.save_results(scan.id, duplicate)
    bad_late = make_rows(3000, seed=5)
    bad_late[2500]["close"] = "12.5"  # found only after 2,500 rows were already streamed
    with pytest.raises(InvalidInput, match=r"rows\[2500\]\.close"):
        await repo.save_results(scan.id, bad_late)
    for bad in ([{"name": "no symbol"}], [42], {"symbol": "X"}, "rows"):
        with pytest.raises(InvalidInput):
            await repo.save_results(scan.id, bad)  # type: ignore[arg-type]
    page = await repo.fetch_results(scan.id, limit=100)
    assert page is not None and page.rows == second  # nothing half-written
    stored = await repo.get_scan(scan.id)
    assert stored is not None and stored.result_count == 20

    assert await repo.save_results(scan.id, []) == 0
    page = await repo.fetch_results(scan.id)
    assert page is not None and page.rows == [] and page.total == 0 and page.next_cursor is None


async def test_rows_of_other_shapes_round_trip(module_repository: Repository) -> None:
    repo = module_repository
    scan = await drive(repo, "running")
    rows = make_rows(6, seed=11)
    rows[2] = dict(reversed(rows[2].items()))  # same keys, another order
    rows[3]["extra"] = {"nested": [1, "two", None, 3.5]}  # a key the others lack
    del rows[4]["industry"]  # a key missing
    await repo.save_results(scan.id, rows)
    page = await repo.fetch_results(scan.id)
    assert page is not None and page.rows == rows
    assert [list(r) for r in page.rows] == [list(r) for r in rows]  # key order kept too
    view = await repo.pool.fetch(
        "SELECT row FROM scan_result_rows WHERE scan_id = $1 ORDER BY rank", scan.id
    )
    assert [r["row"] for r in view] == rows  # SQL users see whole objects
    with pytest.raises(InvalidInput, match="keys must be strings"):
        await repo.save_results(scan.id, [rows[0], {**rows[1], 7: "seven"}])


async def test_non_finite_floats_are_stored_as_none(module_repository: Repository) -> None:
    repo = module_repository
    scan = await drive(repo, "running")
    rows = make_rows(3)
    rows[0]["rsi14"] = math.nan
    rows[1]["macd"] = math.inf
    rows[2]["close"] = 7  # an int stays an int in the stored row
    await repo.save_results(scan.id, rows)
    page = await repo.fetch_results(scan.id, sort="rsi14")
    assert page is not None
    by_symbol = {r["symbol"]: r for r in page.rows}
    assert by_symbol[rows[0]["symbol"]]["rsi14"] is None
    assert by_symbol[rows[1]["symbol"]]["macd"] is None
    assert by_symbol[rows[2]["symbol"]]["close"] == 7
    assert isinstance(by_symbol[rows[2]["symbol"]]["close"], int)
    assert page.rows[-1]["symbol"] == rows[0]["symbol"]  # a NaN rsi14 sorts as missing: last


def expected_order(rows: list[dict[str, Any]], sort: str, descending: bool) -> list[int]:
    """Ranks in the order the repository promises: by value, missing last, ties by rank."""
    order = {s: i for i, s in enumerate(SIGNALS, 1)}

    def value(rank: int, row: dict[str, Any]) -> Any:
        if sort == "rank":
            return rank
        return order.get(row["signal"]) if sort == "signal" else row.get(sort)

    ranked = list(enumerate(rows, 1))
    present = [(rank, value(rank, row)) for rank, row in ranked if value(rank, row) is not None]
    missing = [rank for rank, row in ranked if value(rank, row) is None]
    present.sort(key=lambda p: p[0])
    present.sort(key=lambda p: p[1], reverse=descending)  # stable: ties keep rank order
    return [rank for rank, _ in present] + missing


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("sort", sorted(RESULT_SORTS))
async def test_fetch_results_sorts_and_pages(
    module_repository: Repository, sort: str, descending: bool
) -> None:
    repo = module_repository
    scan = await drive(repo, "running")
    rows = make_rows(230, seed=6)
    await repo.save_results(scan.id, rows)
    want = expected_order(rows, sort, descending)
    if sort in ("symbol", "sector"):
        # text order is the database collation's; check it is a consistent total order
        page = await repo.fetch_results(scan.id, sort=sort, descending=descending, limit=1000)
        assert page is not None and sorted(page.ranks) == list(range(1, 231))
        want = page.ranks
    got: list[int] = []
    cursor = None
    while True:
        page = await repo.fetch_results(
            scan.id, sort=sort, descending=descending, limit=37, cursor=cursor
        )
        assert page is not None
        got += page.ranks
        assert [rows[r - 1] for r in page.ranks] == page.rows
        cursor = page.next_cursor
        if cursor is None:
            break
    assert got == want
    by_offset: list[int] = []
    for offset in range(0, 230, 50):
        page = await repo.fetch_results(
            scan.id, sort=sort, descending=descending, limit=50, offset=offset
        )
        assert page is not None
        by_offset += page.ranks
    assert by_offset == want


async def test_export_results_reads_every_row_in_the_order_of_the_pages(
    module_repository: Repository,
) -> None:
    repo = module_repository
    scan = await drive(repo, "running")
    rows = make_rows(2 * EXPORT_BATCH_ROWS + 321, seed=9)
    await repo.save_results(scan.id, rows)
    for sort in RESULT_SORTS:
        for descending in (False, True):
            paged: list[dict[str, Any]] = []
            cursor = None
            while True:
                page = await repo.fetch_results(
                    scan.id, sort=sort, descending=descending, limit=1000, cursor=cursor
                )
                assert page is not None
                paged += page.rows
                if (cursor := page.next_cursor) is None:
                    break
            export = await repo.export_results(scan.id, sort=sort, descending=descending)
            assert export is not None and len(export) == len(rows)
            batches = [batch async for batch in export.batches()]
            assert [len(b) for b in batches] == [EXPORT_BATCH_ROWS] * 2 + [321]
            assert [row for batch in batches for row in batch] == paged, (sort, descending)
    window = await repo.export_results(scan.id, sort="close", offset=1990, limit=20)
    assert window is not None
    got = [row async for batch in window.batches() for row in batch]
    page = await repo.fetch_results(scan.id, sort="close", offset=1990, limit=20)
    assert page is not None and got == page.rows
    assert await repo.export_results(uuid4()) is None
    assert await repo.export_results("not-a-uuid") is None
    empty = await drive(repo, "completed")
    export = await repo.export_results(empty.id)
    assert export is not None and len(export) == 0
    assert [batch async for batch in export.batches()] == []
    for bad in ({"limit": 0}, {"limit": 2**31}, {"offset": -1}, {"sort": "data"}):
        with pytest.raises(InvalidInput):
            await repo.export_results(scan.id, **bad)  # type: ignore[arg-type]


async def test_fetch_results_filters(module_repository: Repository) -> None:
    repo = module_repository
    scan = await drive(repo, "running")
    rows = make_rows(300, seed=7)
    await repo.save_results(scan.id, rows)

    page = await repo.fetch_results(scan.id, sector="Energy", limit=1000)
    assert page is not None
    assert page.rows == [r for r in rows if r["sector"] == "Energy"]
    assert page.total == len(page.rows)

    page = await repo.fetch_results(scan.id, signal=["Strong Buy", "Buy"], limit=1000)
    assert page is not None
    assert page.rows == [r for r in rows if r["signal"] in ("Strong Buy", "Buy")]

    page = await repo.fetch_results(
        scan.id, min_tech_rating=60, signal="Buy", sort="close", descending=True, limit=5
    )
    assert page is not None
    matching = [r for r in rows if r["tech_rating"] >= 60 and r["signal"] == "Buy"]
    assert page.total == len(matching)
    assert page.rows == sorted(matching, key=lambda r: -r["close"])[:5]


@pytest.mark.parametrize("hostile", INJECTIONS)
async def test_fetch_results_injection_attempts(
    module_repository: Repository, hostile: str
) -> None:
    repo = module_repository
    scan = await drive(repo, "running")
    rows = make_rows(20, seed=8)
    await repo.save_results(scan.id, rows)
    with pytest.raises(InvalidInput, match="sort"):
        await repo.fetch_results(scan.id, sort=hostile)
    with pytest.raises(InvalidInput, match="signal"):
        await repo.fetch_results(scan.id, signal=hostile)
    with pytest.raises(InvalidInput, match="cursor"):
        await repo.fetch_results(scan.id, cursor=hostile)
    if "\x00" in hostile:  # PostgreSQL text cannot hold NUL: refused before the query
        with pytest.raises(InvalidInput, match="sector"):
            await repo.fetch_results(scan.id, sector=hostile)
    else:
        page = await repo.fetch_results(scan.id, sector=hostile)  # a value: matches nothing
        assert page is not None and page.rows == [] and page.total == 0
    page = await repo.fetch_results(scan.id, limit=100)
    assert page is not None and page.rows == rows  # everything still there


async def test_fetch_results_argument_checks(module_repository: Repository) -> None:
    repo = module_repository
    scan = await drive(repo, "running")
    await repo.save_results(scan.id, make_rows(30, seed=9))
    for limit in (0, -1, 1001, "10", True, 2.5, None):
        with pytest.raises(InvalidInput, match="limit"):
            await repo.fetch_results(scan.id, limit=limit)  # type: ignore[arg-type]
    for offset in (-1, "5", 10**9, True):
        with pytest.raises(InvalidInput, match="offset"):
            await repo.fetch_results(scan.id, offset=offset)  # type: ignore[arg-type]
    page = await repo.fetch_results(scan.id, sort="close", limit=5)
    assert page is not None and page.next_cursor is not None
    with pytest.raises(InvalidInput, match="offset"):
        await repo.fetch_results(scan.id, sort="close", offset=5, cursor=page.next_cursor)
    with pytest.raises(InvalidInput, match="another sort"):
        await repo.fetch_results(scan.id, sort="rsi14", cursor=page.next_cursor)
    with pytest.raises(InvalidInput, match="another sort"):
        await repo.fetch_results(scan.id, sort="close", descending=True, cursor=page.next_cursor)
    with pytest.raises(InvalidInput, match="min_tech_rating"):
        await repo.fetch_results(scan.id, min_tech_rating="50; DROP TABLE scans")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="sector"):
        await repo.fetch_results(scan.id, sector=["Energy"])  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="descending"):
        await repo.fetch_results(scan.id, descending="yes")  # type: ignore[arg-type]


# ------------------------------------------------------------------------- failures


async def test_failures_append_in_order(module_repository: Repository) -> None:
    repo = module_repository
    scan = await drive(repo, "running")
    assert await repo.fetch_failures(scan.id) == []
    assert await repo.save_failures(scan.id, [{"symbol": "AAA", "reason": "no data"}]) == 1
    more = [Failure("BBB", "too few bars"), {"symbol": "AAA", "reason": "again'; DROP TABLE x"}]
    assert await repo.save_failures(scan.id, more) == 2
    assert await repo.save_failures(scan.id, []) == 0
    assert await repo.fetch_failures(scan.id) == [
        Failure("AAA", "no data"),
        Failure("BBB", "too few bars"),
        Failure("AAA", "again'; DROP TABLE x"),
    ]
    for bad in ([{"symbol": "X"}], [("X", "why")], [{"symbol": 1, "reason": "r"}]):
        with pytest.raises(InvalidInput, match="failures"):
            await repo.save_failures(scan.id, bad)  # type: ignore[arg-type]
    assert len(await repo.fetch_failures(scan.id) or []) == 3


# ---------------------------------------------------------------------------- lists


async def test_list_scans_filters_and_keyset_pages(module_repository: Repository) -> None:
    repo = module_repository
    made = []
    for status in ["completed", "failed", "running", "pending", "completed", "cancelled"] * 4:
        made.append(await drive(repo, status))
    newest_first = sorted(made, key=lambda s: (s.created_at, s.id), reverse=True)

    seen: list[UUID] = []
    cursor = None
    while True:
        page = await repo.list_scans(limit=5, cursor=cursor)
        seen += [s.id for s in page.scans]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [s.id for s in newest_first]

    page = await repo.list_scans(status="completed", limit=100)
    assert [s.id for s in page.scans] == [s.id for s in newest_first if s.status == "completed"]
    page = await repo.list_scans(status=["failed", "cancelled"], limit=100)
    assert {s.status for s in page.scans} == {"failed", "cancelled"} and len(page.scans) == 8

    middle = newest_first[10].created_at
    page = await repo.list_scans(since=middle, limit=100)
    assert [s.id for s in page.scans] == [s.id for s in newest_first if s.created_at >= middle]
    page = await repo.list_scans(until=middle, limit=100)
    assert [s.id for s in page.scans] == [s.id for s in newest_first if s.created_at < middle]
    page = await repo.list_scans(since=datetime.now(UTC) + timedelta(days=1))
    assert page.scans == [] and page.next_cursor is None


@pytest.mark.parametrize("hostile", INJECTIONS)
async def test_list_scans_injection_attempts(module_repository: Repository, hostile: str) -> None:
    repo = module_repository
    await drive(repo, "completed")
    with pytest.raises(InvalidInput, match="status"):
        await repo.list_scans(status=hostile)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="status"):
        await repo.list_scans(status=["completed", hostile])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="cursor"):
        await repo.list_scans(cursor=hostile)
    with pytest.raises(InvalidInput, match="since"):
        await repo.list_scans(since=hostile)  # type: ignore[arg-type]
    assert len((await repo.list_scans()).scans) == 1


async def test_list_scans_argument_checks(module_repository: Repository) -> None:
    repo = module_repository
    with pytest.raises(InvalidInput, match="since"):
        await repo.list_scans(since=datetime(2024, 1, 1))  # naive: ambiguous
    for limit in (0, 5000, "5"):
        with pytest.raises(InvalidInput, match="limit"):
            await repo.list_scans(limit=limit)  # type: ignore[arg-type]
    forged = "WyIyMDI0LTAxLTAxIiwibm90LWEtdXVpZCJd"  # base64 of ["2024-01-01","not-a-uuid"]
    with pytest.raises(InvalidInput, match="cursor"):
        await repo.list_scans(cursor=forged)


# ------------------------------------------------------------- interrupted, deletion


async def test_mark_interrupted(module_repository: Repository) -> None:
    repo = module_repository
    pending = await repo.create_scan(uuid4(), {}, owner="host-a")
    running = await repo.create_scan(uuid4(), {}, owner="host-a")
    await repo.transition(running.id, "running")
    await repo.start_stage(running.id, "universe_loading")
    await repo.finish_stage(running.id, "universe_loading", units_done=10)
    await repo.start_stage(running.id, "data_fetching")
    other = await repo.create_scan(uuid4(), {}, owner="host-b")
    await repo.transition(other.id, "running")
    done = await drive(repo, "completed")

    assert await repo.mark_interrupted(owner="nobody") == []
    assert await repo.mark_interrupted(stale_before=datetime.now(UTC) - timedelta(hours=1)) == []
    marked = await repo.mark_interrupted(owner="host-a")
    assert set(marked) == {pending.id, running.id}

    scan = await repo.get_scan(running.id)
    assert scan is not None and scan.status == "interrupted" and scan.error
    assert scan.finished_at is not None
    assert [s.status for s in scan.stages] == ["completed", "failed", "pending", "pending"]
    assert await repo.mark_interrupted() == [other.id]
    assert (await repo.get_scan(done.id)).status == "completed"  # type: ignore[union-attr]
    assert await repo.mark_interrupted() == []


async def test_mark_interrupted_spares_the_scans_of_owners_seen_recently(
    module_repository: Repository,
) -> None:
    repo = module_repository
    await repo.pool.execute("DELETE FROM scan_owners")
    await repo.record_owner("alive")
    await repo.record_owner("dead")
    await repo.pool.execute(
        "UPDATE scan_owners SET seen_at = now() - interval '1 minute' WHERE owner = 'dead'"
    )
    alive = await repo.create_scan(uuid4(), {}, owner="alive")
    await repo.transition(alive.id, "running")
    dead = await repo.create_scan(uuid4(), {}, owner="dead")
    await repo.transition(dead.id, "running")
    never_recorded = await repo.create_scan(uuid4(), {}, owner="never-recorded")
    no_owner = await repo.create_scan(uuid4(), {})

    marked = await repo.mark_interrupted(silent_for_s=30)
    assert set(marked) == {dead.id, never_recorded.id, no_owner.id}
    assert (await repo.get_scan(alive.id)).status == "running"  # type: ignore[union-attr]
    assert await repo.forget_silent_owners(30) == 1
    owners = await repo.pool.fetch("SELECT owner FROM scan_owners")
    assert [r["owner"] for r in owners] == ["alive"]
    await repo.record_owner("alive")  # a heartbeat: the same owner, seen again
    assert await repo.pool.fetchval("SELECT count(*) FROM scan_owners") == 1
    with pytest.raises(InvalidInput, match="silent_for_s"):
        await repo.mark_interrupted(silent_for_s=-1)


async def test_deleting_a_scan_deletes_its_rows(module_repository: Repository) -> None:
    repo = module_repository
    keep, drop = await drive(repo, "running"), await drive(repo, "running")
    for scan in (keep, drop):
        await repo.save_results(scan.id, make_rows(5))
        await repo.save_failures(scan.id, [Failure("X", "r")])
    pool = repo.pool
    await pool.execute("DELETE FROM scans WHERE id = $1", drop.id)
    counts = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM scan_results WHERE scan_id = $1) AS results,"
        " (SELECT count(*) FROM scan_failures WHERE scan_id = $1) AS failures,"
        " (SELECT count(*) FROM stage_timings WHERE scan_id = $1) AS stages,"
        " (SELECT count(*) FROM scan_results) AS all_results",
        drop.id,
    )
    assert dict(counts) == {"results": 0, "failures": 0, "stages": 0, "all_results": 5}
