"""Connections that have not said who they are are bounded, and bad frames cost one log line.

Real `manage.py serve` stacks (uvicorn with chat/infra/uvicorn_protocols.py; daphne for the log
checks) and real sockets from this test, on loopback:

- a request head dribbled a byte at a time (slowloris) is closed (408) once CHAT_HANDSHAKE_TIMEOUT_S
  has passed since the connection opened, however busy the dribbling;
- one address may have CHAT_INCOMPLETE_HANDSHAKES_PER_IP connections waiting for their head; the
  next is closed at once, and a slot frees when one of them goes;
- one address may have CHAT_UNAUTH_SOCKETS_PER_IP sockets waiting for their `auth` frame; the next
  is closed 4429, whatever X-Forwarded-For it claims (no proxy is trusted);
- a text frame that is not UTF-8, and a server close while frames are still queued for the socket,
  each log one line, never a traceback (uvicorn and daphne).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from tests.support.limits import LOAD_TEST_ENV
from tests.support.servers import Stack, login, running_stack, shared_conversation
from tests.support.waiting import consistently, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

HEAD_TIMEOUT_S = 3.0
INCOMPLETE_PER_IP = 4
UNAUTH_PER_IP = 3
ENV = {
    **LOAD_TEST_ENV,
    "CHAT_HANDSHAKE_TIMEOUT_S": str(HEAD_TIMEOUT_S),
    "CHAT_INCOMPLETE_HANDSHAKES_PER_IP": str(INCOMPLETE_PER_IP),
    "CHAT_UNAUTH_SOCKETS_PER_IP": str(UNAUTH_PER_IP),
    "CHAT_AUTH_TIMEOUT_S": "20",  # far beyond any wait below: a 4401 would not be mistaken for a 4429
    "CHAT_ABUSE_LIMIT": "2",
    "TRUSTED_PROXIES": "",
}


@pytest.fixture(scope="module")
def uvicorn_stack() -> Iterator[Stack]:
    with running_stack(env_overrides=ENV) as s:
        yield s


@pytest.fixture(scope="module")
def daphne_stack() -> Iterator[Stack]:
    with running_stack(server="daphne", env_overrides=ENV) as s:
        yield s


class RawConnection:
    """A TCP connection to the server that records when the server closed it and what it said."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.received = b""
        self.closed_at: float | None = None
        self.opened_at = time.monotonic()
        self._task = asyncio.create_task(self._read(reader))

    @classmethod
    async def open(cls, stack: Stack) -> RawConnection:
        return cls(*await asyncio.open_connection(stack.host, stack.ports[0]))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(4096):
                self.received += chunk
        except OSError:
            pass
        self.closed_at = time.monotonic()

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    async def send(self, data: bytes) -> bool:
        """Write `data` unless the server has closed; True once it has."""
        if not self.closed:
            try:
                self.writer.write(data)
                await self.writer.drain()
            except OSError:
                pass
        return self.closed

    def close(self) -> None:
        self.writer.close()
        self._task.cancel()


async def test_a_dribbled_request_head_is_closed_at_the_deadline(uvicorn_stack: Stack) -> None:
    conn = await RawConnection.open(uvicorn_stack)
    await conn.send(b"GET /ws/chat/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    try:
        # One more byte every 0.2 s: the head keeps arriving and never completes.
        await eventually(lambda: conn.send(b"a"), timeout=HEAD_TIMEOUT_S + 7, interval=0.2, what="the server closing")
        assert conn.closed_at is not None
        assert conn.closed_at - conn.opened_at >= HEAD_TIMEOUT_S - 0.5
        assert conn.received.startswith(b"HTTP/1.1 408"), conn.received[:80]
    finally:
        conn.close()


async def test_incomplete_heads_per_address_are_capped(uvicorn_stack: Stack) -> None:
    waiting = [await RawConnection.open(uvicorn_stack) for _ in range(INCOMPLETE_PER_IP)]
    try:
        one_more = await RawConnection.open(uvicorn_stack)
        await eventually(lambda: one_more.closed, timeout=HEAD_TIMEOUT_S - 1, what="the extra connection closed")
        assert one_more.received == b""
        assert not any(conn.closed for conn in waiting)
        waiting.pop().close()  # one leaves: its place is free again (once the server has seen it go)
        waiting.append(await eventually(lambda: stays_open(uvicorn_stack), timeout=5, what="a free place"))
    finally:
        for conn in waiting:
            conn.close()


async def stays_open(stack: Stack) -> RawConnection | None:
    conn = await RawConnection.open(stack)
    try:
        await consistently(lambda: not conn.closed, duration=0.3)
    except AssertionError:
        conn.close()
        return None
    return conn


async def unauthenticated(stack: Stack, claimed_ip: str) -> Any:
    return await websockets.connect(
        stack.ws_url(),
        subprotocols=[Subprotocol("chat.v1")],
        additional_headers={"X-Forwarded-For": claimed_ip},
        open_timeout=10,
        ping_interval=None,
    )


async def close_code(ws: Any, timeout: float) -> int | None:
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


async def test_unauthenticated_sockets_per_address_are_capped_whatever_they_claim(uvicorn_stack: Stack) -> None:
    token = login(uvicorn_stack, "alice")
    waiting = [await unauthenticated(uvicorn_stack, f"203.0.113.{i}") for i in range(UNAUTH_PER_IP)]
    try:
        extra = await unauthenticated(uvicorn_stack, "198.51.100.7")  # another "address", same peer
        assert await close_code(extra, timeout=5) == 4429
        # One of them authenticates: it no longer waits, so another may.
        first = waiting[0]
        await first.send(json.dumps({"type": "auth", "id": "a", "token": token}))
        assert json.loads(await first.recv())["type"] == "welcome"
        another = await unauthenticated(uvicorn_stack, "198.51.100.8")
        waiting.append(another)
        await another.send(json.dumps({"type": "ping", "id": "p"}))
        reply = json.loads(await asyncio.wait_for(another.recv(), 5))
        assert reply["error"]["code"] == "bad_request"  # "authenticate first": open, waiting for auth
    finally:
        for ws in waiting:
            await ws.close()


def raw_websocket(stack: Stack, token: str, rcvbuf: int = 65536) -> tuple[socket.socket, ClientProtocol]:
    """A blocking chat.v1 client socket that has read its welcome; it reads nothing more by itself."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect((stack.host, stack.ports[0]))
    proto = ClientProtocol(parse_uri(stack.ws_url()), subprotocols=[Subprotocol("chat.v1")])
    request = proto.connect()
    request.headers["Authorization"] = f"Bearer {token}"
    proto.send_request(request)
    flush(sock, proto)
    while not any(isinstance(event, Frame) for event in proto.events_received()):
        proto.receive_data(sock.recv(65536))
    return sock, proto


def flush(sock: socket.socket, proto: ClientProtocol) -> None:
    for data in proto.data_to_send():
        if data:
            sock.sendall(data)


def close_frame_code(sock: socket.socket, proto: ClientProtocol) -> int | None:
    """Read to the end of the connection; the code of the server's close frame, if one arrived."""
    code = None
    while True:
        try:
            data = sock.recv(1 << 16)
        except OSError:
            break
        if not data:
            break
        proto.receive_data(data)
        for event in proto.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.CLOSE and len(event.data) >= 2:
                code = int.from_bytes(event.data[:2], "big")
    sock.close()
    return code


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
async def test_a_frame_that_is_not_utf8_closes_the_socket_with_one_log_line(
    server: str, request: pytest.FixtureRequest
) -> None:
    stack: Stack = request.getfixturevalue(f"{server}_stack")
    sock, proto = await asyncio.to_thread(raw_websocket, stack, login(stack, "alice"))
    proto.send_frame(Frame(Opcode.TEXT, b'{"type": "ping", "id": "\xff\xfe"}'))
    flush(sock, proto)
    # (autobahn, under daphne, may drop the connection without its close frame)
    assert await asyncio.to_thread(close_frame_code, sock, proto) in ({1007} if server == "uvicorn" else {1007, None})
    if server == "uvicorn":
        await eventually(lambda: "was not valid UTF-8" in stack.log(), timeout=5, what="the one log line")
    assert "Traceback" not in stack.log(), stack.log()[-3000:]


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
async def test_a_server_close_with_frames_still_queued_logs_one_line(
    server: str, request: pytest.FixtureRequest
) -> None:
    stack: Stack = request.getfixturevalue(f"{server}_stack")
    alice = login(stack, "alice")
    conv = shared_conversation(stack, alice, "bob")
    # Subscribers that stop reading, on a conversation that then gets busy: their outboxes fill.
    subscribers = [await asyncio.to_thread(raw_websocket, stack, login(stack, "bob"), 4096) for _ in range(4)]
    for sock, proto in subscribers:
        proto.send_text(json.dumps({"type": "subscribe", "id": "s", "conversation": conv}).encode())
        flush(sock, proto)
    async with websockets.connect(
        stack.ws_url(), subprotocols=[Subprotocol("chat.v1")], additional_headers={"Authorization": f"Bearer {alice}"}
    ) as publisher:
        await publisher.recv()  # welcome
        text = "x" * 15_000
        for i in range(150):
            command = {"type": "send", "id": f"m{i}", "conversation": conv, "client_msg_id": f"m{i}", "text": text}
            await publisher.send(json.dumps(command))
        replies = []
        while len(replies) < 150:
            frame = json.loads(await asyncio.wait_for(publisher.recv(), 30))
            replies += [frame] if frame.get("type") == "reply" else []
        assert all(reply["ok"] for reply in replies), [reply for reply in replies if not reply["ok"]][:3]
    # Each subscriber now sends malformed frames: the server closes it (4400) with its queue not empty.
    for sock, proto in subscribers:
        for _ in range(3):
            proto.send_text(b'{"type": "no-such-command"}')
        flush(sock, proto)
    codes = await asyncio.gather(*[asyncio.to_thread(close_frame_code, sock, proto) for sock, proto in subscribers])
    assert set(codes) <= {4400, None}, codes  # (the close frame may be cut off with the unread frames)
    if server == "daphne":  # (uvicorn ends the writer before it tries again: nothing to log)
        await eventually(lambda: "frame(s) unsent" in stack.log(), timeout=10, what="one line, no traceback")
    assert "Traceback" not in stack.log(), stack.log()[-3000:]
