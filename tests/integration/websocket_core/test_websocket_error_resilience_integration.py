"""Error resilience with real fault injection on the real stack.

Two uvicorn processes and the agent worker (`manage.py serve`, tests/support/servers.py) run against
a Redis of their own (tests/support/faults.py RedisServer, killed and restarted empty on the same
port; the shared 6379 is never touched) and reach PostgreSQL through a TCP proxy that can refuse
connections (TcpProxy: every open connection reset, every new one refused). Real `websockets`
clients drive them. Every wait is a condition with a deadline.

The degradation contract (docs/operations.md, "When a dependency is down"):

* Redis down: sockets stay open; `send`, `history`, `subscribe` and REST work from PostgreSQL;
  messages still reach the other sockets, on this and the other process, through the hubs' resync
  against the log; typing degrades silently; `presence` answers `unavailable`. Redis back (empty):
  publishes that failed are published again in the background, the channel layer resubscribes,
  and live delivery resumes, exactly once and in order, with nobody doing anything.
* PostgreSQL refusing connections: sockets stay open; database commands answer `unavailable` with
  `retry_after_ms`, fast once the circuit is open; new sockets are closed 1013 (not 4401); PostgreSQL
  back: the same sockets work again and the agent worker claims runs again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.faults import RedisServer, TcpProxy, refused
from tests.support.servers import Stack, login, running_stack, shared_conversation
from tests.support.waiting import eventually

pytestmark = [pytest.mark.e2e]

Frame = dict[str, Any]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def pg_proxy() -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", 5432) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, pg_proxy: TcpProxy) -> Iterator[Stack]:
    env = {
        "REDIS_URL": redis_server.url,
        "DB_POOL_MIN": "1",
        "AGENT_OFFLINE_TOKEN_DELAY_MS": "0",
        "TOKEN_THROTTLE_RATE": "100000/min",
    }
    with running_stack(processes=2, env_overrides=env, database_address=f"127.0.0.1:{pg_proxy.port}") as s:
        yield s


@pytest.fixture
def faults_healed(redis_server: RedisServer, pg_proxy: TcpProxy) -> Iterator[None]:
    """Whatever a test broke is repaired afterwards, even when it failed half-way."""
    yield
    if not redis_server.running():
        redis_server.start()
    if not pg_proxy.listening:
        pg_proxy.restore()


async def connect(stack: Stack, token: str, process: int) -> Any:
    return await websockets.connect(
        stack.ws_url(process),
        subprotocols=["chat.v1"],  # type: ignore[list-item]
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=10,
        ping_interval=None,
        max_size=2**20,
    )


class Socket:
    """A real WebSocket client of /ws/chat/ that records every frame and how the socket ended."""

    def __init__(self, ws: Any, label: str) -> None:
        self.ws = ws
        self.label = label
        self.frames: list[Frame] = []
        self.close_code: int | None = None
        self.closed = False
        self._ids = 0
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, stack: Stack, token: str, *, process: int = 0, label: str = "") -> Socket:
        ws = await connect(stack, token, process)
        sock = cls(ws, label or f"p{process}")
        await sock.until(lambda f: f["type"] == "welcome", timeout=10)
        return sock

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.frames.append(json.loads(raw))
                self._arrived.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.close_code = self.ws.close_code
            self._arrived.set()

    async def until(self, predicate: Callable[[Frame], bool], timeout: float = 10, start: int = 0) -> Frame:
        deadline = time.monotonic() + timeout
        checked = start
        while True:
            while checked < len(self.frames):
                frame = self.frames[checked]
                checked += 1
                if predicate(frame):
                    return frame
            if self.closed:
                raise AssertionError(f"{self.label} closed ({self.close_code}) while waiting; last: {self.frames[-5:]}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.label}: condition not met within {timeout}s; last: {self.frames[-5:]}")
            self._arrived.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                pass

    async def command(self, type: str, timeout: float = 20, **fields: Any) -> tuple[Frame, float]:
        """Send a command; return its reply and how long the reply took (seconds)."""
        self._ids += 1
        command_id = f"{self.label}-{self._ids}"
        mark = len(self.frames)
        started = time.monotonic()
        await self.ws.send(json.dumps({"type": type, "id": command_id, **fields}))
        reply = await self.until(lambda f: f.get("type") == "reply" and f.get("id") == command_id, timeout, mark)
        return reply, time.monotonic() - started

    async def ok(self, type: str, timeout: float = 20, **fields: Any) -> Frame:
        reply, _ = await self.command(type, timeout, **fields)
        assert reply["ok"] is True, f"{self.label} {type}: {reply}"
        return reply

    def events(self, conversation: str) -> list[Frame]:
        return [f for f in self.frames if f.get("conversation") == conversation and "seq" in f]

    def texts(self, conversation: str) -> list[str]:
        return [e["data"]["text"] for e in self.events(conversation) if e["type"] == "message"]

    def assert_open(self) -> None:
        assert not self.closed, f"{self.label} was closed with {self.close_code}"

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()


async def until_ok(sock: Socket, type: str, timeout: float = 20, **fields: Any) -> Frame:
    """Send the command until it succeeds, waiting `retry_after_ms` after each `unavailable`."""
    deadline = time.monotonic() + timeout
    while True:
        reply, _ = await sock.command(type, timeout, **fields)
        if reply["ok"]:
            return reply
        assert reply["error"]["code"] == "unavailable", reply
        assert time.monotonic() < deadline, f"{sock.label} {type} still unavailable after {timeout}s: {reply}"
        await asyncio.sleep(min(reply["error"].get("retry_after_ms", 1000), 2000) / 1000)


def rest_events(stack: Stack, token: str, conversation: str) -> httpx.Response:
    return httpx.get(
        f"{stack.base_url}/api/conversations/{conversation}/events/?limit=100",
        headers={"Authorization": f"Bearer {token}"},
        timeout=15,
    )


def log_seqs(stack: Stack, token: str, conversation: str) -> list[int]:
    response = rest_events(stack, token, conversation)
    response.raise_for_status()
    return [e["seq"] for e in response.json()["events"]]


async def open_sockets(stack: Stack, specs: list[tuple[str, int, str]]) -> list[Socket]:
    return [await Socket.open(stack, token, process=process, label=label) for token, process, label in specs]


def listeners(client: redis.Redis, channel: str) -> int:
    return int(dict(client.pubsub_numsub(channel))[channel.encode()])


def group_subscribers(client: redis.Redis, stack: Stack, conversation: str) -> int:
    """How many server processes' channel-layer connections listen to the conversation's group."""
    return listeners(client, f"{stack.env['CHANNEL_PREFIX']}__group__conv.{conversation}")


def buffered_seqs(client: redis.Redis, stack: Stack, conversation: str) -> set[int]:
    key = f"{stack.env['CHANNEL_PREFIX']}:buf:c:{conversation}"
    return {int(score) for _, score in client.zrange(key, 0, -1, withscores=True)}


def assert_exactly_once_in_order(sock: Socket, conversation: str, log: list[int], since: int) -> None:
    seqs = [e["seq"] for e in sock.events(conversation)]
    assert seqs == [s for s in log if s > since], f"{sock.label}: {seqs} vs log {log} after {since}"


TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")


def run_ended(run_id: str) -> Callable[[Frame], bool]:
    return lambda f: f.get("type") in TERMINAL and f.get("data", {}).get("run_id") == run_id


# --- Redis -------------------------------------------------------------------------------------


async def test_redis_outage_degrades_gracefully_and_recovers_by_itself(
    stack: Stack, redis_server: RedisServer, faults_healed: None
) -> None:
    alice, bob = login(stack, "alice"), login(stack, "bob")
    conv = shared_conversation(stack, alice, "bob", title="redis outage")
    conv2 = shared_conversation(stack, alice, "bob", title="subscribed while redis is down")
    agent_conv = shared_conversation(stack, alice, "bob", title="agent while redis is down", agent=True)
    a0, b0, b1 = await open_sockets(stack, [(alice, 0, "a0"), (bob, 0, "b0"), (bob, 1, "b1")])
    for sock in (a0, b0, b1):
        await sock.ok("subscribe", conversation=conv)
    await b1.ok("subscribe", conversation=agent_conv)
    before = (await a0.ok("send", conversation=conv, client_msg_id="before", text="before"))["message"]["seq"]
    for sock in (b0, b1):
        await sock.until(lambda f: f.get("seq") == before and f.get("conversation") == conv)
    since = before - 1

    redis_server.kill()
    assert refused(redis_server.port)

    # Commands that only need PostgreSQL keep working, and answer promptly.
    reply, took = await a0.command("send", conversation=conv, client_msg_id="during", text="during")
    assert reply["ok"] is True, reply
    assert took < 3.0, f"send took {took:.2f}s with Redis down"
    during = reply["message"]["seq"]
    for i in range(3):  # enough failures to open the redis circuit: later calls fail fast
        assert (await a0.ok("send", conversation=conv, client_msg_id=f"during{i}", text=f"during {i}"))["ok"]
    last_during = during + 3
    reply, took = await b1.command("history", conversation=conv)
    assert reply["ok"] is True, reply
    assert [e["seq"] for e in reply["events"]][-4:] == list(range(during, last_during + 1))
    assert took < 3.0
    assert rest_events(stack, bob, conv).status_code == 200
    # Ephemeral features: typing degrades silently (a lost typing frame is harmless; an error would
    # only make clients retry it), presence says it cannot answer now.
    reply, took = await a0.command("typing", conversation=conv, state="start")
    assert reply["ok"] is True, reply
    assert took < 3.0
    reply, took = await a0.command("presence", conversation=conv)
    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == "unavailable", reply
    assert reply["error"].get("retry_after_ms", 0) > 0, reply
    assert took < 3.0
    # Subscribing works from the log; a new socket can connect and subscribe.
    reply, took = await b1.command("subscribe", conversation=conv2)
    assert reply["ok"] is True, reply
    assert took < 3.0
    c1 = await Socket.open(stack, bob, process=1, label="c1")
    assert (await c1.ok("subscribe", conversation=conv2))["head_seq"] == 0
    first2 = (await a0.ok("send", conversation=conv2, client_msg_id="x1", text="conv2 during"))["message"]["seq"]

    # Meanwhile the hubs poll the log: everyone still gets every message, exactly once, in order.
    for sock in (b0, b1):
        await sock.until(lambda f: f.get("seq") == last_during and f.get("conversation") == conv, timeout=10)
    for sock in (b1, c1):
        await sock.until(lambda f: f.get("seq") == first2 and f.get("conversation") == conv2, timeout=10)
    for sock in (a0, b0, b1, c1):
        sock.assert_open()

    # The agent worker, restarted while Redis is down, keeps running and completes runs (it claims
    # from the database); its events reach the sockets through the log.
    old_worker = stack.child("runworker").pid
    os.kill(old_worker, signal.SIGKILL)
    new_worker = await eventually(
        lambda: next((p.pid for p in stack.children("runworker") if p.pid != old_worker), None),
        20,
        "worker restart",
        interval=0.1,
    )
    run = await a0.ok(
        "send", conversation=agent_conv, client_msg_id="prompt", text="@assistant hello while redis is down"
    )
    ended = await b1.until(run_ended(run["run_id"]), timeout=30)
    assert ended["type"] == "agent_completed", ended
    assert stack.child("runworker").pid == new_worker, "the worker exited on the dead channel layer"

    redis_server.start()  # empty: nothing was kept on disk
    client = redis.Redis.from_url(redis_server.url)

    # Both processes' channel layers resubscribe by themselves, including the group of the
    # conversation that was subscribed while Redis was down, and the failed publishes are
    # published again (the buffer holds them).
    await eventually(
        lambda: group_subscribers(client, stack, conv) == 2, 20, "both processes resubscribe to conv", interval=0.1
    )
    await eventually(
        lambda: group_subscribers(client, stack, conv2) == 1,
        20,
        "process 1 joins conv2 once Redis is back",
        interval=0.1,
    )
    await eventually(
        lambda: listeners(client, "agent-runs") == 1, 20, "the restarted worker listens for doorbells", interval=0.1
    )
    await eventually(
        lambda: set(range(during, last_during + 1)) <= buffered_seqs(client, stack, conv),
        20,
        "the publishes that failed are published again",
        interval=0.1,
    )

    # Live delivery again, on both processes.
    after = (await a0.ok("send", conversation=conv, client_msg_id="after", text="after"))["message"]["seq"]
    after2 = (await a0.ok("send", conversation=conv2, client_msg_id="x2", text="conv2 after"))["message"]["seq"]
    for sock in (b0, b1):
        await sock.until(lambda f: f.get("seq") == after and f.get("conversation") == conv, timeout=10)
    for sock in (b1, c1):
        await sock.until(lambda f: f.get("seq") == after2 and f.get("conversation") == conv2, timeout=10)
    log = log_seqs(stack, bob, conv)
    assert log[-1] == after
    for sock in (b0, b1):
        assert_exactly_once_in_order(sock, conv, log, since)
    assert b0.texts(conv)[-1] == "after"
    assert "during" in b1.texts(conv)
    for sock in (b1, c1):
        assert_exactly_once_in_order(sock, conv2, log_seqs(stack, bob, conv2), 0)
    assert_exactly_once_in_order(b1, agent_conv, log_seqs(stack, bob, agent_conv), 0)
    assert stack.child("runworker").pid == new_worker
    reply, _ = await a0.command("presence", conversation=conv)
    assert reply["ok"] is True, reply
    for sock in (a0, b0, b1, c1):
        sock.assert_open()
        await sock.close()


async def test_a_hung_redis_never_hangs_a_command(stack: Stack, redis_server: RedisServer, faults_healed: None) -> None:
    """SIGSTOP: Redis accepts connections but never answers. Every Redis call on a command path is
    bounded, so commands still answer within seconds, and everything resumes when Redis does."""
    alice, bob = login(stack, "alice"), login(stack, "bob")
    conv = shared_conversation(stack, alice, "bob", title="hung redis")
    late = shared_conversation(stack, alice, "bob", title="subscribed while redis hangs")
    a0, b1 = await open_sockets(stack, [(alice, 0, "a0"), (bob, 1, "b1")])
    for sock in (a0, b1):
        await sock.ok("subscribe", conversation=conv)

    redis_server.freeze()
    try:
        for who, type, fields in [
            (b1, "subscribe", {"conversation": late}),  # presence cut short; the group is live after
            (a0, "send", {"conversation": conv, "client_msg_id": "h0", "text": "hung 0"}),
            (a0, "typing", {"conversation": conv, "state": "start"}),
            (a0, "send", {"conversation": conv, "client_msg_id": "h1", "text": "hung 1"}),
            (a0, "history", {"conversation": conv}),
            (a0, "subscribe", {"conversation": conv, "since_seq": 0}),
        ]:
            reply, took = await who.command(type, timeout=10, **fields)
            print(f"Redis hung: {type} answered in {took:.2f}s")
            assert reply["ok"] is True, (type, reply)
            # Until the circuit opens, each Redis call of a command waits out its bound: at most
            # the rate limiter (0.5 s) plus two calls of 1 s (a subscribe: group join, presence).
            assert took < 3.5, f"{type} took {took:.2f}s with Redis hung"
        await b1.until(lambda f: f.get("conversation") == conv and f.get("type") == "message" and f["seq"] == 2, 10)
    finally:
        redis_server.thaw()
    client = redis.Redis.from_url(redis_server.url)
    await eventually(
        lambda: group_subscribers(client, stack, late) == 1, 20, "the new group is live after the thaw", interval=0.1
    )
    last = (await a0.ok("send", conversation=conv, client_msg_id="h2", text="thawed"))["message"]["seq"]
    first_late = (await a0.ok("send", conversation=late, client_msg_id="l1", text="late"))["message"]["seq"]
    await b1.until(lambda f: f.get("seq") == last and f.get("conversation") == conv, timeout=15)
    await b1.until(lambda f: f.get("seq") == first_late and f.get("conversation") == late, timeout=15)
    assert_exactly_once_in_order(b1, conv, log_seqs(stack, bob, conv), 0)
    assert_exactly_once_in_order(b1, late, log_seqs(stack, bob, late), 0)
    for sock in (a0, b1):
        sock.assert_open()
        await sock.close()


# --- PostgreSQL ---------------------------------------------------------------------------------


async def connect_close_code(stack: Stack, token: str, process: int) -> int | None:
    """The close code a new socket gets instead of a welcome (None: it was welcomed; a negative
    number: the handshake itself was refused with that HTTP status)."""
    try:
        ws = await connect(stack, token, process)
    except InvalidStatus as exc:
        return -exc.response.status_code
    try:
        async with asyncio.timeout(15):
            first = json.loads(await ws.recv())
    except ConnectionClosed:
        return ws.close_code
    assert first["type"] == "welcome", first
    await ws.close()
    return None


async def test_postgres_refusing_connections_degrades_gracefully_and_recovers(
    stack: Stack, pg_proxy: TcpProxy, faults_healed: None
) -> None:
    alice, bob = login(stack, "alice"), login(stack, "bob")
    conv = shared_conversation(stack, alice, "bob", title="postgres outage")
    agent_conv = shared_conversation(stack, alice, "bob", title="agent after outage", agent=True)
    a0, b1 = await open_sockets(stack, [(alice, 0, "a0"), (bob, 1, "b1")])
    for sock in (a0, b1):
        await sock.ok("subscribe", conversation=conv)
        await sock.ok("subscribe", conversation=agent_conv)
    before = (await a0.ok("send", conversation=conv, client_msg_id="before", text="before"))["message"]["seq"]
    await b1.until(lambda f: f.get("seq") == before and f.get("conversation") == conv)

    pg_proxy.refuse()
    assert refused(pg_proxy.port)
    assert pg_proxy.open_connections() == 0

    # Database commands answer `unavailable` with retry_after_ms; once the circuit is open, at once.
    timings: list[tuple[str, float]] = []
    commands = [
        ("send", {"conversation": conv, "client_msg_id": f"down{i}", "text": f"down {i}"}) for i in range(6)
    ] + [("history", {"conversation": conv}), ("subscribe", {"conversation": conv, "since_seq": 0})]
    for type, fields in commands:
        reply, took = await a0.command(type, timeout=30, **fields)
        timings.append((type, round(took, 2)))
        assert reply["ok"] is False, (type, reply)
        assert reply["error"]["code"] == "unavailable", (type, reply)
        assert reply["error"]["retry_after_ms"] > 0, (type, reply)
    print(f"PostgreSQL refused: command reply times {timings}")
    assert all(took < 0.5 for _, took in timings[-3:]), f"not fast once the circuit is open: {timings}"
    assert sum(took for _, took in timings) < 15, f"the first failures are too slow: {timings}"
    # Things that need no database keep working: ping, and typing in a subscribed conversation.
    reply, took = await b1.command("ping")
    assert reply["ok"] is True, reply
    assert took < 0.5
    reply, _ = await a0.command("typing", conversation=conv, state="start")
    assert reply["ok"] is True, reply
    await b1.until(lambda f: f.get("type") == "typing" and f.get("conversation") == conv, timeout=5)
    # A new socket cannot be authenticated now: try again later (1013), not "bad token" (4401).
    assert await connect_close_code(stack, bob, 1) == 1013
    for sock in (a0, b1):
        sock.assert_open()

    pg_proxy.restore()
    restored = time.monotonic()

    # The same sockets work again without reconnecting, each process as soon as its connection
    # pool reconnects (clients retry as told by retry_after_ms).
    back = (await until_ok(a0, "send", conversation=conv, client_msg_id="back", text="back"))["message"]["seq"]
    print(f"PostgreSQL back: send ok after {time.monotonic() - restored:.1f}s")
    await b1.until(lambda f: f.get("seq") == back and f.get("conversation") == conv, timeout=10)
    assert b1.texts(conv)[-2:] == ["before", "back"]
    assert_exactly_once_in_order(b1, conv, log_seqs(stack, bob, conv), 0)
    history = await until_ok(b1, "history", conversation=conv)
    assert [e["seq"] for e in history["events"]] == [before, back]
    assert (await until_ok(b1, "subscribe", conversation=conv, since_seq=0))["head_seq"] == back
    assert await connect_close_code(stack, bob, 0) is None
    print(f"PostgreSQL back: both processes serve commands after {time.monotonic() - restored:.1f}s")

    # The agent worker claims runs again: a prompt after the outage gets its answer.
    run = await until_ok(a0, "send", conversation=agent_conv, client_msg_id="prompt", text="@assistant hello agent")
    ended = await b1.until(run_ended(run["run_id"]), timeout=30)
    assert ended["type"] == "agent_completed", ended
    for sock in (a0, b1):
        sock.assert_open()
        await sock.close()
