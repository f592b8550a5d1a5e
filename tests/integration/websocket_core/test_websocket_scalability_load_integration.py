"""Scale in one process: hundreds of sockets and dozens of conversations on the real PostgreSQL and the
real Redis channel layer, driven through the ASGI app. Checks what must hold at any size: every
subscriber gets every event once, in order, with no gap and nothing from elsewhere, equal to the log;
an idle socket costs a bounded amount of memory, and closing sockets leaves no state behind; a
subscriber that stops reading does not hold up the others.

The figures are printed (`pytest -s`); the thresholds are generous, so they hold on a loaded two-core
machine. Real throughput and latency figures come from tests/benchmarks/fanout.py on a real server.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import time
import tracemalloc
import weakref
from typing import Any

import psutil
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from chat import selectors
from chat.infra import handshake_guard
from chat.infra.doorbells import conversation_group, user_group
from chat.infra.rate_limiter import get_slots, key
from chat.infra.redis_client import redis_client
from chat.realtime import ephemeral
from chat.realtime.broadcast_manager import RESYNC_INTERVAL_S, Hub, get_hub
from chatsite.asgi import application
from tests.support import factories
from tests.support.load import Tap, bounded, close_all, people, percentile, since_stored, subscribed
from tests.support.waiting import eventually
from tests.support.ws import OPEN_CLIENTS, Client, connected

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_password_hashing")]


@pytest.fixture
def rates_lifted(settings: Any) -> None:
    """Every tier's rates lifted far above what these tests send: they measure delivery, not admission
    (the limits have tests of their own). Connection limits stay as they are."""
    tiers = copy.deepcopy(settings.CHAT_TIERS)
    for row in tiers.values():
        row["rates"] = {name: [10_000_000, window] for name, (_, window) in row["rates"].items()}
    settings.CHAT_TIERS = tiers


def stored_frames(conversation: str, after_seq: int) -> list[dict[str, Any]]:
    """The conversation's durable log after `after_seq`, as the frames a subscriber is sent."""
    return [json.loads(e.encoded()) for e in selectors.events_after(conversation_id=conversation, after_seq=after_seq)]


# --- 1. many sockets, many conversations ----------------------------------------------------------------

SOCKETS = 200
TABS_PER_USER = 2  # each user has two sockets open (two tabs), both subscribed to all of the user's rooms
USERS = SOCKETS // TABS_PER_USER
CONVERSATIONS = 20
SENDERS_PER_CONVERSATION = 3
MESSAGES_PER_SENDER = 2


def build_rooms(make_user: Any) -> tuple[list[str], list[str], list[list[int]]]:
    """USERS users in CONVERSATIONS people-only conversations: user i in conversation i % 20 and every
    third user in a second one too. Returns the users' tokens, the conversations and each one's
    member indexes."""
    users, tokens = people(make_user, USERS)
    members: list[list[int]] = [[] for _ in range(CONVERSATIONS)]
    for i in range(USERS):
        members[i % CONVERSATIONS].append(i)
        if i % 3 == 0 and (second := (i * 7 + 3) % CONVERSATIONS) != i % CONVERSATIONS:
            members[second].append(i)
    conversations = [
        factories.conversation_sync(
            users[idx[0]], agent="", title=f"room {c}", members=tuple((users[i], "member") for i in idx[1:])
        )
        for c, idx in enumerate(members)
    ]
    return tokens, conversations, members


@pytest.mark.timeout(90)
async def test_every_subscriber_of_twenty_busy_conversations_gets_every_event_once_in_order(
    make_user: Any, rates_lifted: None
) -> None:
    tokens, conversations, members = await database_sync_to_async(build_rooms)(make_user)
    # Socket s is a tab of user s // TABS_PER_USER and subscribes to every conversation of that user.
    rooms_of = [
        [conversations[c] for c, idx in enumerate(members) if s // TABS_PER_USER in idx] for s in range(SOCKETS)
    ]
    opened = await bounded([subscribed(tokens[s // TABS_PER_USER], rooms_of[s]) for s in range(SOCKETS)])
    heads: dict[str, int] = {}
    for _, answered in opened:
        for conv, head in answered.items():
            assert heads.setdefault(conv, head) == head, "subscribers of one conversation saw different heads"
    taps = [Tap(client) for client, _ in opened]

    # The burst: in every conversation at once, several members each send a run of messages without
    # waiting for the replies.
    sent_at: dict[str, float] = {}
    commands: list[tuple[Tap, str, str]] = []

    async def burst(sender: int, conv: str) -> None:
        for k in range(MESSAGES_PER_SENDER):
            text = f"{conv[:8]} from {sender} #{k}"
            sent_at[text] = time.time()
            cid = await taps[sender].send(
                "send", conversation=conv, client_msg_id=f"{conv[:8]}-{sender}-{k}", text=text
            )
            commands.append((taps[sender], cid, conv))

    started = time.time()
    await asyncio.gather(
        *(
            burst(sender, conv)
            for conv, idx in zip(conversations, members, strict=True)
            for sender in [i * TABS_PER_USER for i in idx[:SENDERS_PER_CONVERSATION]]  # each sender's first tab
        )
    )
    await eventually(lambda: all(cid in tap.replies for tap, cid, _ in commands), timeout=45, what="every send's reply")
    seqs: dict[str, list[int]] = {conv: [] for conv in conversations}
    for tap, cid, conv in commands:
        reply = tap.replies[cid]
        assert reply["ok"] is True, reply
        seqs[conv].append(reply["message"]["seq"])
    sent_per_conv = SENDERS_PER_CONVERSATION * MESSAGES_PER_SENDER
    for conv, got in seqs.items():  # nobody else writes here: the sends took exactly the next seqs
        assert sorted(got) == list(range(heads[conv] + 1, heads[conv] + sent_per_conv + 1))

    def behind() -> list[tuple[int, str, int]]:
        return [
            (i, conv, len(taps[i].events(conv)))
            for i in range(SOCKETS)
            for conv in rooms_of[i]
            if len(taps[i].events(conv)) < sent_per_conv
        ]

    await eventually(lambda: not behind(), timeout=45, what=lambda: f"sockets still behind: {behind()[:5]}")
    finished = max(t for tap in taps for t, _ in tap.arrivals)
    for tap in taps:
        await tap.stop()
    await close_all([client for client, _ in opened])

    logs = {conv: await database_sync_to_async(stored_frames)(conv, heads[conv]) for conv in conversations}
    latencies: list[float] = []
    fan_out: list[float] = []
    for i, tap in enumerate(taps):
        mine = set(rooms_of[i])
        strangers = {f.get("conversation") for _, f in tap.arrivals if f.get("conversation")} - mine
        assert not strangers, f"socket {i} received frames of conversations it is not in: {strangers}"
        assert not [f for _, f in tap.arrivals if f["type"] in ("error", "__close__")]
        for conv in mine:
            events = tap.events(conv)
            # Exactly once, in increasing seq, no gap, and the same frames as the durable log.
            assert [f["seq"] for _, f in events] == list(range(heads[conv] + 1, heads[conv] + sent_per_conv + 1))
            assert [f for _, f in events] == logs[conv]
            latencies += [t - sent_at[f["data"]["text"]] for t, f in events]
            fan_out += [since_stored(t, f) for t, f in events]

    elapsed = finished - started
    messages = CONVERSATIONS * sent_per_conv
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(
        f"\nscale: {SOCKETS} sockets of {USERS} users, {CONVERSATIONS} conversations, {messages} messages, "
        f"{len(latencies)} deliveries "
        f"in {elapsed:.2f} s ({len(latencies) / elapsed:.0f} deliveries/s); "
        f"send->delivery p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; "
        f"stored->delivery p50 {percentile(fan_out, 50) * 1000:.0f} ms, p99 {percentile(fan_out, 99) * 1000:.0f} ms"
    )
    # Send->delivery is mostly each send queueing for the process's one database thread behind the rest
    # of the burst: it measures the machine's load, so it is printed, not bounded. From the store on,
    # the fan-out (commit, doorbell, hub, each socket's outbox) is bounded: below the hub's resync
    # interval, so deliveries that waited for the resync instead of their doorbell fail it.
    assert percentile(fan_out, 99) < RESYNC_INTERVAL_S


# --- 2. memory per socket, and nothing left behind ------------------------------------------------------

MEMORY_USERS = 8
SOCKETS_PER_USER = 5  # the free tier's connection limit: every user holds all its slots
KB_PER_IDLE_SOCKET = 200


def hub_leftovers(hub: Hub, user_ids: list[int], conversation: str) -> dict[str, object]:
    """What the process hub still holds for these users and this conversation (empty: nothing)."""
    groups = {conversation_group(conversation), *(user_group(u) for u in user_ids)}
    found: dict[str, object] = {
        "conversations": hub.conversations.get(conversation),
        "users": {u: hub.users[u] for u in user_ids if u in hub.users},
        "joined groups": groups & set(hub._ready),
        "pending groups": groups & hub.pending_groups,
        "per-conversation state": [
            name
            for name, table in (("recent", hub.recent), ("next_seq", hub.next_seq), ("early", hub.early))
            if conversation in table
        ],
        "gap tasks": hub._gap_tasks.get(conversation),
        "slots held": {u: get_slots()._held[u] for u in user_ids if u in get_slots()._held},
        "awaiting auth": handshake_guard.unauthenticated.total(),
    }
    return {k: v for k, v in found.items() if v}


async def test_idle_sockets_cost_bounded_memory_and_closing_them_leaves_nothing_behind(make_user: Any) -> None:
    users, tokens = await database_sync_to_async(people)(make_user, MEMORY_USERS)
    user_ids = [u.id for u in users]
    conv = await factories.conversation(users[0], agent="", members=tuple((u, "member") for u in users[1:]))
    hub = get_hub()
    # The process's first sockets start the hub, its channel and its resync, fill caches and grow the
    # Redis connection pool to the handshakes' concurrency: costs paid once per process, not per socket.
    warm = await bounded([subscribed(t, [conv]) for t in tokens for _ in range(SOCKETS_PER_USER - 2)])
    await close_all([client for client, _ in warm])
    del warm
    tasks_before = asyncio.all_tasks()
    sockets = MEMORY_USERS * SOCKETS_PER_USER

    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        rss_before = psutil.Process().memory_info().rss
        opened = await bounded([subscribed(t, [conv]) for t in tokens for _ in range(SOCKETS_PER_USER)])
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - baseline
        rss_grown = psutil.Process().memory_info().rss - rss_before
        assert len(hub.conversations[conv]) == sockets
        assert all(len(hub.users[u]) == SOCKETS_PER_USER for u in user_ids)
        outboxes = [weakref.ref(sink) for sink in hub.conversations[conv]]

        # At this scale the connection limit still holds: one more socket for a user is refused.
        extra, accepted, _ = await Client.connect(users[0])
        assert accepted
        assert await extra.expect_close() == 4429
        await extra.close()  # what a server does once the client saw the close
        OPEN_CLIENTS.remove(extra)

        await close_all([client for client, _ in opened])
        del opened
        await eventually(
            lambda: not hub_leftovers(hub, user_ids, conv),
            what=lambda: f"hub still holds {hub_leftovers(hub, user_ids, conv)}",
        )
        # The presence batcher's last flush and the sockets' tasks end shortly after the close.
        await eventually(
            lambda: not asyncio.all_tasks() - tasks_before,
            what=lambda: f"tasks still running: {sorted(t.get_name() for t in asyncio.all_tasks() - tasks_before)}",
        )
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()

    redis = redis_client()
    slots = [await redis.zcard(key("conns", u)) for u in user_ids]
    assert slots == [0] * MEMORY_USERS, "connection slots left in Redis"
    online, _ = await ephemeral.store().online(conv, time.time())
    assert online == set(), "presence still lists closed sockets"
    per_socket_kb = grown / sockets / 1024
    print(
        f"\nmemory: {sockets} idle subscribed sockets: {per_socket_kb:.1f} KB each traced (client side included), "
        f"RSS +{rss_grown / sockets / 1024:.0f} KB each; "
        f"{retained / sockets / 1024:.1f} KB each still held after closing"
    )
    assert per_socket_kb < KB_PER_IDLE_SOCKET
    # Closed sockets give their memory back (a socket kept by any registry would hold its outbox,
    # queue and tasks: tens of KB each). Some shared state may still grow a little (the Redis pool, the
    # rate limiter's mirror of its windows), bounded and not per socket.
    assert retained < grown / 4, f"{retained} of {grown} bytes still held after every socket closed"
    # Nothing keeps a closed socket's outbox (and so its consumer) alive.
    assert [ref for ref in outboxes if ref() is not None] == []
    # And the slots are usable again: the user whose sixth socket was refused connects.
    again = await connected(headers=[(b"authorization", f"Bearer {tokens[0]}".encode())])
    assert again.welcome["user"]["id"] == users[0].id


# --- 3. a subscriber that stops reading ------------------------------------------------------------------

FAST_SUBSCRIBERS = 8
BURST = 80
# Frames the stalled client's transport holds before the server's send waits (a real client's socket
# buffers); past that, the server's writer for that socket blocks and its outbox queue grows.
SLOW_WINDOW = 8


async def stalled_subscriber(token: str, conversation: str) -> Client:
    """A client subscribed to `conversation` that then stops reading."""
    comm = WebsocketCommunicator(
        application, "/ws/chat/", headers=[(b"authorization", f"Bearer {token}".encode())], subprotocols=["chat.v1"]
    )
    # asgiref creates the application's output queue on first use; a bounded one is what a client's
    # TCP socket is: once SLOW_WINDOW frames wait unread, the server's send waits for the client.
    comm._output_queue = asyncio.Queue(maxsize=SLOW_WINDOW)
    client = Client(comm)
    OPEN_CLIENTS.append(client)
    accepted, _ = await comm.connect(timeout=5)
    assert accepted
    welcome = await client.recv()
    client.welcome = welcome["data"]
    assert (await client.command("subscribe", conversation=conversation))["ok"] is True
    return client


async def test_a_stalled_subscriber_does_not_hold_up_the_others(make_user: Any, rates_lifted: None) -> None:
    users, tokens = await database_sync_to_async(people)(make_user, FAST_SUBSCRIBERS + 1)
    conv = await factories.conversation(users[0], agent="", members=tuple((u, "member") for u in users[1:]))
    slow = await stalled_subscriber(tokens[-1], conv)
    opened = await bounded([subscribed(t, [conv]) for t in tokens[:-1]])  # the first one also sends
    head = opened[0][1][conv]
    taps = [Tap(client) for client, _ in opened]
    sent_at: dict[int, float] = {}
    for k in range(BURST):
        sent_at[k] = time.time()
        await taps[0].send("send", conversation=conv, client_msg_id=f"burst-{k}", text=f"burst {k}")
    expected = list(range(head + 1, head + BURST + 1))
    await eventually(
        lambda: all(len(tap.events(conv)) >= BURST for tap in taps),
        timeout=30,
        what=lambda: f"fast subscribers' counts: {[len(t.events(conv)) for t in taps]}",
    )
    # The stall is real: while the others got everything, the stalled client's transport is full and
    # the rest of the burst waits in its outbox.
    outbox = next(s for s in get_hub().conversations[conv] if s.session_id == slow.welcome["session_id"])
    assert slow.comm.output_queue.full()
    assert outbox.pending() >= BURST - SLOW_WINDOW - 1
    for tap in taps:
        await tap.stop()

    log = await database_sync_to_async(stored_frames)(conv, head)
    arrivals: dict[int, list[float]] = {}
    latencies: list[float] = []
    fan_out: list[float] = []
    for tap in taps:
        events = tap.events(conv)
        assert [f for _, f in events] == log  # nothing lost, nothing twice, in order, as stored
        for t, f in events:
            arrivals.setdefault(f["seq"], []).append(t)
            latencies.append(t - sent_at[int(f["data"]["text"].split()[1])])
            fan_out.append(since_stored(t, f))
    spreads = [max(times) - min(times) for times in arrivals.values()]
    print(
        f"\nstalled subscriber: {FAST_SUBSCRIBERS} fast sockets got {BURST} messages while one held "
        f"{outbox.pending()} unsent; send->delivery p50 {percentile(latencies, 50) * 1000:.0f} ms, "
        f"p99 {percentile(latencies, 99) * 1000:.0f} ms; stored->delivery p99 {percentile(fan_out, 99) * 1000:.0f} ms; "
        f"first-to-last socket per event p99 {percentile(spreads, 99) * 1000:.1f} ms"
    )
    # The fast sockets get each event soon after it is stored, and at about the same moment as each
    # other (the hub hands it to every socket's queue without waiting on any): a fan-out that waited
    # on the stalled socket would hold them up and spread them apart.
    assert percentile(fan_out, 99) < RESYNC_INTERVAL_S
    assert percentile(spreads, 99) < 1.0

    # Once it reads again, the stalled client gets the whole burst too, in order, still connected.
    await slow.until(lambda f: f.get("seq") == head + BURST, timeout=20)
    assert [f["seq"] for f in slow.events(conv)] == expected
    assert [f for f in slow.events(conv)] == log
    assert not [f for f in slow.frames if f["type"] == "__close__"]
