"""The hub on its own: pure asyncio, no sockets."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import orjson
import pytest
import technic.server.hub as hub_module
from technic.server.cursor import Cursor
from technic.server.hub import Hub, Message, encode_ws_text_frame


def snap(seq: int, status: str = "running", **extra: object) -> dict[str, object]:
    return {"scan_id": "s1", "status": status, "seq": seq, "overall_progress": seq, **extra}


async def collect(subscription: hub_module.Subscription, timeout_s: float = 2.0) -> list[Message]:
    async with asyncio.timeout(timeout_s):
        return [message async for message in subscription]


async def test_latest_is_retained_and_delivered_on_subscribe() -> None:
    hub = Hub(clock=lambda: 1234.5)
    hub.publish("s1", snap(1))
    hub.publish("s1", snap(2))
    assert hub.has_topic("s1") and not hub.has_topic("s2")
    latest = hub.latest("s1")
    assert latest is not None and latest["seq"] == 2 and latest["published_at"] == 1234.5
    subscription = hub.subscribe("s1")
    message = await subscription.get(timeout_s=1)
    assert message is not None and message.seq == 2 and message.event == "progress"
    epoch = message.epoch
    assert orjson.loads(message.data) == {**snap(2), "published_at": 1234.5, "epoch": epoch}
    hub.publish("s1", snap(3))
    message = await subscription.get(timeout_s=1)
    assert message is not None and message.seq == 3
    subscription.close()
    assert hub.stats().subscribers == 0


async def test_since_skips_what_the_client_has() -> None:
    hub = Hub()
    hub.publish("s1", snap(5))
    subscription = hub.subscribe("s1", since=5)
    with pytest.raises(TimeoutError):
        await subscription.get(timeout_s=0.01)
    hub.publish("s1", snap(6))
    message = await subscription.get(timeout_s=1)
    assert message is not None and message.seq == 6
    # A resume point from the future skips until the topic passes it.
    ahead = hub.subscribe("s1", since=8)
    hub.publish("s1", snap(7))
    await asyncio.sleep(0)  # swept: 7 is offered, and skipped
    hub.publish("s1", snap(9))
    message = await ahead.get(timeout_s=1)
    assert message is not None and message.seq == 9
    assert ahead.conflated == 0


def test_a_cursor_resumes_only_the_stream_it_came_from() -> None:
    hub = Hub()
    assert hub.resume_seq("s1", Cursor(None, 3)) is None  # nothing sent yet
    for seq in (1, 2, 3):
        hub.publish("s1", snap(seq))
    epoch = hub.latest("s1")["epoch"]
    assert epoch != Hub().publish("s1", snap(1)).epoch  # another process: another epoch
    assert hub.resume_seq("s1", None) is None
    assert hub.resume_seq("s1", Cursor(epoch, 2)) == 2
    assert hub.resume_seq("s1", Cursor(epoch, 3)) == 3
    assert hub.resume_seq("s1", Cursor(epoch, 4)) is None  # never sent: not ours
    assert hub.resume_seq("s1", Cursor("0ld3p0c4", 2)) is None  # another stream
    assert hub.resume_seq("s1", Cursor(None, 3)) == 3  # a bare seq this stream sent
    assert hub.resume_seq("s1", Cursor(None, 82)) is None  # ... or one it never sent
    assert hub.resume_seq("s2", Cursor(epoch, 2)) is None  # another topic


async def test_slow_subscriber_gets_only_the_newest_and_conflation_is_counted() -> None:
    hub = Hub()
    subscription = hub.subscribe("s1")
    for seq in range(1, 101):
        hub.publish("s1", snap(seq))
    message = await subscription.get(timeout_s=1)
    assert message is not None and message.seq == 100
    assert subscription.conflated == 99
    assert hub.stats().conflated == 99
    with pytest.raises(TimeoutError):
        await subscription.get(timeout_s=0.01)


async def test_stalled_subscriber_does_not_delay_the_others() -> None:
    hub = Hub()
    stalled = hub.subscribe("s1")
    received: list[int] = []

    async def reader() -> None:
        async with hub.subscribe("s1") as subscription:
            async for message in subscription:
                received.append(message.seq)

    task = asyncio.create_task(reader())
    await asyncio.sleep(0)
    for seq in range(1, 101):
        hub.publish("s1", snap(seq))
        await asyncio.sleep(0)
    hub.publish("s1", snap(101, "completed"))
    async with asyncio.timeout(2):
        await task
    assert received == list(range(1, 102))
    # The stalled one holds a single message: the terminal, and then ends.
    assert [m.seq for m in await collect(stalled)] == [101]
    assert stalled.conflated == 100 and stalled.end_reason == "terminal"


async def test_terminal_is_delivered_then_iteration_ends() -> None:
    hub = Hub()
    subscription = hub.subscribe("s1")
    hub.publish("s1", snap(1))
    hub.publish("s1", snap(2, "failed", error="boom"))
    messages = await collect(subscription)
    assert [(m.seq, m.event, m.terminal) for m in messages] == [(2, "failed", True)]
    assert subscription.end_reason == "terminal"
    assert await subscription.get() is None
    assert hub.is_finished("s1")
    stats = hub.stats()
    assert stats.subscribers == 0 and stats.finished_topics == 1 and stats.active_topics == 0


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled", "interrupted"])
async def test_every_terminal_status_names_its_event(status: str) -> None:
    hub = Hub()
    message = hub.publish("s1", snap(1, status))
    assert message is not None and message.terminal and message.event == status


async def test_late_subscriber_after_terminal_gets_it_and_ends() -> None:
    hub = Hub()
    hub.publish("s1", snap(1))
    hub.publish("s1", snap(2, "completed"))
    assert [m.seq for m in await collect(hub.subscribe("s1"))] == [2]
    assert [m.seq for m in await collect(hub.subscribe("s1", since=1))] == [2]
    caught_up = hub.subscribe("s1", since=2)
    assert await collect(caught_up) == []
    assert caught_up.end_reason == "terminal"
    assert hub.stats().subscribers == 0


async def test_late_and_duplicate_seq_are_ignored() -> None:
    hub = Hub()
    subscription = hub.subscribe("s1")
    assert hub.publish("s1", snap(3)) is not None
    assert hub.publish("s1", snap(3)) is None
    assert hub.publish("s1", snap(2)) is None
    assert (await subscription.get(timeout_s=1)).seq == 3  # type: ignore[union-attr]
    with pytest.raises(TimeoutError):
        await subscription.get(timeout_s=0.01)
    assert hub.latest("s1")["seq"] == 3  # type: ignore[index]
    hub.publish("s1", snap(4, "completed"))
    assert hub.publish("s1", snap(5)) is None  # nothing after the terminal state
    stats = hub.stats()
    assert stats.published == 2 and stats.ignored == 3
    with pytest.raises(ValueError, match="seq"):
        hub.publish("s1", {"status": "running"})


async def test_shutdown_ends_every_subscription() -> None:
    hub = Hub()
    hub.publish("a", snap(1))
    subscriptions = [hub.subscribe("a"), hub.subscribe("b"), hub.subscribe("b")]
    waiting = [asyncio.create_task(collect(s)) for s in subscriptions[1:]]
    await asyncio.sleep(0)
    hub.shutdown()
    assert [len(await task) for task in waiting] == [0, 0]
    assert await collect(subscriptions[0]) == []  # the undelivered message is dropped
    assert all(s.end_reason == "shutdown" for s in subscriptions)
    late = hub.subscribe("a")
    assert await collect(late) == [] and late.end_reason == "shutdown"
    assert hub.publish("a", snap(2)) is None
    assert hub.stats().subscribers == 0


async def test_bytes_are_serialised_once_and_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real_dumps = orjson.dumps

    def counting_dumps(value: object) -> bytes:
        nonlocal calls
        calls += 1
        return real_dumps(value)

    monkeypatch.setattr(hub_module.orjson, "dumps", counting_dumps)
    hub = Hub()
    subscriptions = [hub.subscribe("s1") for _ in range(5)]
    hub.publish("s1", snap(1))
    messages = [await s.get(timeout_s=1) for s in subscriptions]
    assert calls == 1
    first = messages[0]
    assert first is not None
    assert all(m is first for m in messages)
    assert all(m.data is first.data for m in messages)  # type: ignore[union-attr]
    assert first.ws_frame() is first.ws_frame()
    assert first.sse_event() is first.sse_event()
    assert first.sse_event(named=True) is first.sse_event(named=True)


async def test_sink_takes_messages_directly_but_never_overtakes_the_consumer() -> None:
    hub = Hub()
    written: list[int] = []
    accept = True

    def sink(message: Message) -> bool:
        if accept:
            written.append(message.seq)
        return accept

    subscription = hub.subscribe("s1", sink=sink)
    hub.publish("s1", snap(1))
    await asyncio.sleep(0)  # delivery happens in the sweep the loop runs next
    hub.publish("s1", snap(2))
    await asyncio.sleep(0)
    assert written == [1, 2] and subscription.last_seq == 2
    accept = False
    hub.publish("s1", snap(3))  # refused: goes to the mailbox
    await asyncio.sleep(0)
    accept = True
    hub.publish("s1", snap(4))  # mailbox not empty: conflated, the sink is not asked
    await asyncio.sleep(0)
    assert written == [1, 2]
    message = await subscription.get(timeout_s=1)
    assert message is not None and message.seq == 4 and subscription.conflated == 1
    hub.publish("s1", snap(5))  # the consumer is still handling 4: mailbox, not the sink
    await asyncio.sleep(0)
    assert written == [1, 2]
    message = await subscription.get(timeout_s=1)
    assert message is not None and message.seq == 5
    waiting = asyncio.create_task(subscription.get())
    await asyncio.sleep(0)  # the consumer is idle again: the sink is used
    hub.publish("s1", snap(6, "completed"))
    async with asyncio.timeout(1):
        assert await waiting is None  # a terminal taken by the sink ends the iteration
    assert written == [1, 2, 6]
    assert subscription.end_reason == "terminal"
    assert hub.stats().delivered == 5


async def test_sweeps_coalesce_and_a_pass_yields_between_chunks() -> None:
    hub = Hub(sweep_chunk=2)
    got: dict[int, list[int]] = {i: [] for i in range(5)}

    def sink_for(index: int) -> Callable[[Message], bool]:
        def sink(message: Message) -> bool:
            got[index].append(message.seq)
            return True

        return sink

    for index in range(5):
        hub.subscribe("s1", sink=sink_for(index))
    hub.publish("s1", snap(1))
    hub.publish("s1", snap(2))  # before the sweep ran: one pass, with the newest
    await asyncio.sleep(0)  # one chunk: subscribers 0 and 1
    assert got == {0: [2], 1: [2], 2: [], 3: [], 4: []}
    hub.publish("s1", snap(3))  # mid-pass: the rest of the pass sends 3, then 0 and 1 get it
    for _ in range(5):
        await asyncio.sleep(0)
    assert got == {0: [2, 3], 1: [2, 3], 2: [3], 3: [3], 4: [3]}
    stats = hub.stats()
    assert stats.sweeps == 2
    assert stats.conflated == 5 + 3  # seq 1 never reached anyone, seq 2 not 2..4
    assert stats.delivered == 7


def test_publish_without_a_running_loop_delivers_at_once() -> None:
    hub = Hub(sweep_chunk=1)
    got: list[int] = []
    for _ in range(3):
        hub.subscribe("s1", sink=lambda message: got.append(message.seq) is None)
    hub.publish("s1", snap(1))
    assert got == [1, 1, 1]


async def test_retention_is_bounded_and_forget_drops_a_topic() -> None:
    hub = Hub(max_finished_topics=2)
    for topic in ("a", "b", "c"):
        hub.publish(topic, snap(1, "completed"))
    assert not hub.has_topic("a") and hub.has_topic("b") and hub.has_topic("c")
    hub.forget("b")
    assert hub.latest("b") is None and hub.stats().finished_topics == 1
    hub.publish("live", snap(1))
    assert hub.stats().topics == 2  # running topics are never evicted


async def test_close_topic_and_forget_end_subscribers_after_their_mailbox() -> None:
    hub = Hub()
    hub.publish("a", snap(1))
    subscription = hub.subscribe("a")
    hub.close_topic("a")
    assert [m.seq for m in await collect(subscription)] == [1]
    assert subscription.end_reason == "closed" and hub.is_finished("a")
    late = hub.subscribe("a")
    assert [m.seq for m in await collect(late)] == [1] and late.end_reason == "closed"
    assert hub.publish("a", snap(2)) is None
    waiting = hub.subscribe("b")  # before the scan published anything
    hub.forget("b")
    assert await collect(waiting) == [] and waiting.end_reason == "closed"


async def test_subscribing_to_an_unpublished_topic_waits_and_cleans_up() -> None:
    hub = Hub()
    async with hub.subscribe("new") as subscription:
        assert hub.has_topic("new")
        getter = asyncio.create_task(subscription.get(timeout_s=1))
        await asyncio.sleep(0)
        hub.publish("new", snap(1))
        message = await getter
        assert message is not None and message.seq == 1
    hub.forget("new")
    async with hub.subscribe("never") as subscription:
        pass
    assert not hub.has_topic("never")


async def test_threadsafe_publisher_bridges_from_a_thread() -> None:
    hub = Hub()
    subscription = hub.subscribe("s1")
    publish = hub.threadsafe_publisher("s1", asyncio.get_running_loop())
    await asyncio.to_thread(publish, snap(1, "completed"))
    assert [m.seq for m in await collect(subscription)] == [1]


def test_wire_encodings() -> None:
    for length in (0, 125, 126, 65535, 65536):
        payload = b"x" * length
        frame = encode_ws_text_frame(payload)
        assert frame[0] == 0x81 and frame.endswith(payload)
        if length < 126:
            assert frame[1] == length
        elif length < 65536:
            assert frame[1] == 126 and struct.unpack("!H", frame[2:4])[0] == length
        else:
            assert frame[1] == 127 and struct.unpack("!Q", frame[2:10])[0] == length
    hub = Hub(clock=lambda: 1.0)
    progress = hub.publish("s1", snap(7))
    assert progress is not None
    data, epoch = progress.data, progress.epoch.encode()
    assert progress.sse_event() == b"id: " + epoch + b".7\ndata: " + data + b"\n\n"
    assert progress.sse_event(named=True) == (
        b"id: " + epoch + b".7\nevent: progress\ndata: " + data + b"\n\n"
    )
    done = hub.publish("s1", snap(8, "cancelled"))
    assert done is not None and done.epoch == progress.epoch
    unnamed = b"id: " + epoch + b".8\ndata: " + done.data + b"\n\n"
    named = b"id: " + epoch + b".8\nevent: cancelled\ndata: " + done.data + b"\n\n"
    assert done.sse_event(named=True) == named
    assert done.sse_event() == unnamed + named


async def test_refresh_swaps_in_what_arrived_while_the_consumer_waited() -> None:
    hub = Hub()
    subscription = hub.subscribe("s1")
    hub.publish("s1", snap(1))
    held = await subscription.get(timeout_s=1)
    assert held is not None and subscription.refresh(held) is held  # nothing newer
    hub.publish("s1", snap(2))
    hub.publish("s1", snap(3, "completed"))
    await asyncio.sleep(0)
    newest = subscription.refresh(held)
    assert newest.seq == 3 and subscription.last_seq == 3
    assert subscription.conflated == 2  # 2 never offered, 1 replaced before it was sent
    assert await subscription.get() is None and subscription.end_reason == "terminal"


async def test_a_failing_sink_does_not_stop_the_sweep(caplog: pytest.LogCaptureFixture) -> None:
    hub = Hub()
    got: list[int] = []

    def broken(message: Message) -> bool:
        raise RuntimeError("boom")

    first = hub.subscribe("s1", sink=broken)
    hub.subscribe("s1", sink=lambda message: got.append(message.seq) is None)
    hub.publish("s1", snap(1))
    await asyncio.sleep(0)
    assert got == [1]
    message = await first.get(timeout_s=1)  # refused by its sink: it waits in the mailbox
    assert message is not None and message.seq == 1
    assert "sink of a s1 subscriber failed" in caplog.text


async def test_settled_waits_until_the_sweep_reached_everyone() -> None:
    hub = Hub(sweep_chunk=1)
    got: list[int] = []
    subscriptions = [
        hub.subscribe("s1", sink=lambda message: got.append(message.seq) is None) for _ in range(3)
    ]
    await subscriptions[0].settled()  # nothing in progress: at once
    hub.publish("s1", snap(1, "completed"))
    await asyncio.sleep(0)  # the first chunk: one subscriber has the terminal state
    assert got == [1] and subscriptions[0].end_reason == "terminal"
    async with asyncio.timeout(1):
        await subscriptions[0].settled()
    assert got == [1, 1, 1]


# -- the fleet: another instance's stream, fed in as its owner serialised it ----------------


def feed(mirror: Hub, owned: Message) -> Message | None:
    """What the bus does with a message the owner published, heard through Redis."""
    return mirror.publish_encoded(
        owned.topic,
        owned.data,
        seq=owned.seq,
        epoch=owned.epoch,
        status=str(owned.snapshot["status"]),
        published_at=owned.published_at,
    )


async def test_a_mirror_keeps_the_owners_bytes_epoch_and_seq() -> None:
    owner_side: list[Message] = []
    owner = Hub(on_publish=owner_side.append)
    mirror = Hub()
    subscription = mirror.subscribe("s1")
    for seq, status in ((1, "running"), (2, "running"), (3, "completed")):
        owner.publish("s1", snap(seq, status))
    sent = owner_side[-1]
    for message in owner_side:
        feed(mirror, message)
    received = await collect(subscription)
    assert received[-1].data is sent.data  # never encoded again
    assert received[-1].epoch == sent.epoch and received[-1].event == "completed"
    assert [m.seq for m in received] == sorted({m.seq for m in received})
    assert subscription.end_reason == "terminal" and mirror.is_finished("s1")
    late = feed(mirror, owner_side[0])
    assert late is None  # after the terminal state nothing is taken
    # the owner's cursor means the same on the mirror
    assert mirror.resume_seq("s1", Cursor(sent.epoch, 2)) == 2


async def test_a_mirror_trailing_the_owner_makes_a_watcher_wait_never_go_back() -> None:
    owner_side: list[Message] = []
    owner = Hub(on_publish=owner_side.append)
    mirror = Hub()
    for seq in (1, 2, 3):
        owner.publish("s1", snap(seq))
    first = owner_side[0]
    feed(mirror, first)
    since = mirror.resume_seq("s1", Cursor(first.epoch, 3))  # the watcher saw 3 on the owner
    assert since == 3
    subscription = mirror.subscribe("s1", since)
    with pytest.raises(TimeoutError):
        await subscription.get(timeout_s=0.05)  # seq 1 is not sent to it
    owner.publish("s1", snap(4))
    feed(mirror, owner_side[-1])
    message = await subscription.get(timeout_s=1)
    assert message is not None and message.seq == 4
    # on the owner itself a cursor beyond its stream is still foreign
    assert owner.resume_seq("s1", Cursor(first.epoch, 9)) is None


async def test_a_state_rebuilt_from_the_database_gives_way_to_the_owners_stream() -> None:
    shared: list[Message] = []
    mirror = Hub(on_publish=shared.append)
    watcher = mirror.subscribe("s1")
    mirror.publish("s1", snap(1), mirror=True)  # the stored state: not this process's scan
    assert shared == []  # never shared as if it were the owner's stream
    owner = Hub()
    owned = owner.publish("s1", snap(7))
    assert owned is not None and owned.epoch != mirror.latest_message("s1").epoch  # type: ignore[union-attr]
    feed(mirror, owned)
    seqs = []
    while not seqs or seqs[-1] != 7:
        message = await watcher.get(timeout_s=1)
        assert message is not None
        seqs.append(message.seq)
    assert seqs in ([1, 7], [7])
    assert mirror.latest_message("s1").epoch == owned.epoch  # type: ignore[union-attr]
    assert (
        mirror.running_topics(mirror=True) == ["s1"] and mirror.running_topics(mirror=False) == []
    )


def test_a_hub_shut_down_still_shares_a_running_scans_last_state() -> None:
    shared: list[Message] = []
    hub = Hub(on_publish=shared.append)
    hub.publish("s1", snap(1))
    hub.shutdown()
    assert hub.publish("s1", snap(2, "cancelled")) is None  # no fan-out here any more
    assert [(m.seq, m.event) for m in shared] == [(1, "progress"), (2, "cancelled")]
