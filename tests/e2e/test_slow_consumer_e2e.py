"""Slow consumers: a client that stops reading is closed by the server with 4408 once its
bounded outbound queue is full, while the other sockets keep receiving everything; the slow client
recovers by resuming with since_seq. Real server: uvicorn applies TCP back-pressure to `send`, so a
stalled reader really does stall the socket's writer."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from chatclient import Backoff, ChatClient
from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from tests.benchmarks.fanout import scrape_metrics, staff_client
from tests.support.limits import LOAD_TEST_ENV
from tests.support.servers import Stack, login, running_stack, shared_conversation

pytestmark = [pytest.mark.e2e]

QUEUE = 50  # the socket's outbound queue for this test: full after 50 frames the kernel cannot take


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Limits lifted: the test floods one room to fill a socket's queue, which a tier would refuse.
    with running_stack(env_overrides={**LOAD_TEST_ENV, "CHAT_OUTBOUND_QUEUE": str(QUEUE)}) as s:
        yield s


class StalledClient:
    """A blocking chat.v1 client on a raw socket with a tiny receive buffer: it reads only when told."""

    def __init__(self, stack: Stack, access: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", stack.ports[0]))
        self.proto = ClientProtocol(parse_uri(stack.ws_url()), subprotocols=[Subprotocol("chat.v1")])
        request = self.proto.connect()
        request.headers["Authorization"] = f"Bearer {access}"
        self.proto.send_request(request)
        self.flush()
        self.frames: list[dict[str, Any]] = []
        self.close_code: int | None = None

    def flush(self) -> None:
        for data in self.proto.data_to_send():
            if data:
                self.sock.sendall(data)

    def read_until(self, predicate: Any) -> None:
        while not any(predicate(f) for f in self.frames):
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("server closed the connection")
            self.feed(data)

    def feed(self, data: bytes) -> None:
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if isinstance(event, Frame) and event.opcode.name == "TEXT":
                self.frames.append(json.loads(event.data))
            elif isinstance(event, Frame) and event.opcode.name == "CLOSE":
                self.close_code = int.from_bytes(event.data[:2], "big") if len(event.data) >= 2 else None
            elif isinstance(event, Response):
                assert event.status_code == 101

    def send(self, frame: dict[str, Any]) -> None:
        self.proto.send_text(json.dumps(frame).encode())
        self.flush()

    def drain_to_eof(self) -> None:
        self.sock.settimeout(10)
        while True:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                return
            if not data:
                return
            self.feed(data)


@pytest.mark.timeout(240)  # its own deadlines (90 + 30 + 30 s) must fire before the suite's timeout
async def test_a_stalled_reader_is_closed_4408_and_nobody_else_waits(stack: Stack) -> None:
    alice, bob = login(stack, "alice"), login(stack, "bob")
    conv = shared_conversation(stack, alice, "bob")
    fast = ChatClient(stack.ws_url(), token=alice, backoff=Backoff(base_s=0.2, cap_s=1.0))
    await fast.start()
    await fast.subscribe(conv)
    stalled = await asyncio.to_thread(StalledClient, stack, bob)
    await asyncio.to_thread(stalled.read_until, lambda f: f.get("type") == "welcome")
    stalled.send({"type": "subscribe", "id": "s", "conversation": conv})
    await asyncio.to_thread(stalled.read_until, lambda f: f.get("id") == "s")
    # From here bob's client reads nothing. Alice keeps sending big messages.
    staff = staff_client(stack)
    assert staff is not None
    text = "x" * 15_000
    sent = 0
    deadline = time.monotonic() + 90
    closes = 0
    while closes == 0 and time.monotonic() < deadline:
        for _ in range(20):
            reply = await fast.send(conv, text, client_msg_id=f"big{sent}")
            assert reply["ok"] is True
            sent += 1
        counters = scrape_metrics(stack, staff).get("all", {})  # summed over the stack's processes
        closes = counters.get("slow_consumer_closes", 0)
    assert closes == 1, f"no slow-consumer close after {sent} messages"
    # Alice's socket, on the same server process, got every message in order meanwhile.
    done = asyncio.Event()
    fast.on_event = lambda f: done.set() if f["seq"] == sent else None
    if (fast.streams[conv].last_seq or 0) < sent:
        async with asyncio.timeout(30):
            await done.wait()
    assert [e["seq"] for e in fast.events(conv)] == list(range(1, sent + 1))
    # What bob's socket did get before the close is an in-order prefix, with no duplicate.
    await asyncio.to_thread(stalled.drain_to_eof)
    seqs = [f["seq"] for f in stalled.frames if f.get("conversation") == conv and "seq" in f]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) < sent
    assert stalled.close_code in (None, 4408)  # the close frame may be cut off with the unread data
    # Bob resumes from where his socket stopped and gets exactly the rest.
    resumed = ChatClient(stack.ws_url(), token=bob)
    await resumed.start()
    finished = asyncio.Event()
    resumed.on_event = lambda f: finished.set() if f["seq"] == sent else None
    await resumed.subscribe(conv, since_seq=len(seqs))
    async with asyncio.timeout(30):
        await finished.wait()
    assert [e["seq"] for e in resumed.events(conv)] == list(range(len(seqs) + 1, sent + 1))
    await fast.close()
    await resumed.close()
