"""The fleet's queue in the database: claims, releases and the LISTEN connection."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import asyncpg
import pytest
from technic.storage import QUEUE_CHANNEL, Listener, Repository

pytestmark = pytest.mark.asyncio(loop_scope="session")

CONFIG = {"provider": "synthetic", "max_symbols": 50}


async def enqueue(repository: Repository) -> str:
    scan_id = uuid4()
    admission = await repository.enqueue_scan(
        scan_id, CONFIG, slots_per_instance=10, live_within_s=30
    )
    assert admission.accepted
    return str(scan_id)


async def test_a_dead_owners_claimed_scan_is_released_and_a_live_owners_kept(
    repository: Repository,
) -> None:
    await repository.record_owner("dead")
    await repository.record_owner("live")
    await repository.pool.execute(
        "UPDATE scan_owners SET seen_at = now() - interval '1 minute' WHERE owner = 'dead'"
    )
    first, second = await enqueue(repository), await enqueue(repository)
    assert str((await repository.claim_scan("dead")).id) == first
    assert str((await repository.claim_scan("live")).id) == second
    assert await repository.claim_scan("live") is None

    assert await repository.mark_interrupted(silent_for_s=30) == []  # pending: not started
    assert [str(i) for i in await repository.release_claims(silent_for_s=30)] == [first]
    assert (await repository.get_scan(second)).owner == "live"
    assert str((await repository.claim_scan("live")).id) == first
    assert await repository.start_claimed(first, "live")
    assert not await repository.start_claimed(second, "dead")


async def test_a_running_scan_of_a_dead_owner_is_interrupted_naming_it(
    repository: Repository,
) -> None:
    await repository.record_owner("gone")
    scan_id = await enqueue(repository)
    await repository.claim_scan("gone")
    assert await repository.start_claimed(scan_id, "gone")
    await repository.pool.execute(
        "UPDATE scan_owners SET seen_at = now() - interval '1 minute' WHERE owner = 'gone'"
    )
    assert [str(i) for i in await repository.mark_interrupted(silent_for_s=30)] == [scan_id]
    scan = await repository.get_scan(scan_id)
    assert scan.status == "interrupted" and "(instance gone)" in (scan.error or "")


async def test_cancelling_a_claimed_scan_stops_its_start(repository: Repository) -> None:
    scan_id = await enqueue(repository)
    await repository.claim_scan("owner")
    scan, outcome = await repository.request_cancel(scan_id) or (None, None)
    assert (scan.status, outcome) == ("pending", "requested")
    assert [str(i) for i in await repository.cancel_requests("owner")] == [scan_id]
    assert not await repository.start_claimed(scan_id, "owner")
    unclaimed = await enqueue(repository)
    scan, outcome = await repository.request_cancel(unclaimed) or (None, None)
    assert (scan.status, outcome) == ("cancelled", "cancelled")
    assert await repository.claim_scan("owner") is None


async def test_the_queue_is_full_at_the_places_of_the_live_instances(
    repository: Repository,
) -> None:
    await repository.record_owner("one")
    await repository.record_owner("two")
    admitted = [
        await repository.enqueue_scan(uuid4(), CONFIG, slots_per_instance=2, live_within_s=30)
        for _ in range(5)
    ]
    assert [a.accepted for a in admitted] == [True, True, True, True, False]
    assert (admitted[-1].active, admitted[-1].instances) == (4, 2)


async def test_the_listener_comes_back_after_its_connection_is_killed(
    repository: Repository, database_url: str
) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    connected = asyncio.Event()
    listener = Listener(
        database_url,
        (QUEUE_CHANNEL,),
        lambda channel, payload: heard.put_nowait(channel),
        on_connected=connected.set,
        retry_s=0.1,
    )
    listener.start()
    try:
        await asyncio.wait_for(connected.wait(), 10)
        await enqueue(repository)
        assert await asyncio.wait_for(heard.get(), 5) == QUEUE_CHANNEL
        connected.clear()
        conn = await asyncpg.connect(database_url)
        try:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN%' AND datname = current_database()"
            )
        finally:
            await conn.close()
        assert killed == 1
        await asyncio.wait_for(connected.wait(), 10)
        await enqueue(repository)
        assert await asyncio.wait_for(heard.get(), 5) == QUEUE_CHANNEL
    finally:
        await listener.stop()
