"""Helpers for driving /ws/chat/ with Channels' WebsocketCommunicator (in-process ASGI)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework_simplejwt.tokens import AccessToken

from chatsite.asgi import application


def access_token(user: Any) -> str:
    return str(AccessToken.for_user(user))


OPEN_CLIENTS: list[Client] = []


class Client:
    """A protocol client over a communicator: sends commands, collects frames in order.
    Every client is closed at the end of its test even when an assertion failed first."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.comm = communicator
        self.frames: list[dict[str, Any]] = []
        self._ids = 0
        self.welcome: dict[str, Any] = {}  # the welcome frame's data, once `connected` has read it

    @classmethod
    async def connect(
        cls,
        user: Any | None = None,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        path: str = "/ws/chat/",
        subprotocols: list[str] | None = None,
    ) -> tuple[Client, Any, Any]:
        hdrs = list(headers or [])
        if user is not None:
            token = await database_sync_to_async(access_token)(user)
            hdrs.append((b"authorization", f"Bearer {token}".encode()))
        comm = WebsocketCommunicator(
            application, path, headers=hdrs, subprotocols=subprotocols if subprotocols is not None else ["chat.v1"]
        )
        connected, subprotocol = await comm.connect(timeout=5)
        client = cls(comm)
        OPEN_CLIENTS.append(client)
        return client, connected, subprotocol

    async def recv(self, timeout: float = 5) -> dict[str, Any]:
        raw = await self.comm.receive_output(timeout)
        if raw["type"] == "websocket.close":
            frame = {"type": "__close__", "code": raw.get("code")}
        else:
            frame = json.loads(raw["text"])
        self.frames.append(frame)
        return frame

    async def send_raw(self, text: str | None = None, data: bytes | None = None) -> None:
        await self.comm.send_to(text_data=text, bytes_data=data)

    async def command(self, type: str, **fields: Any) -> dict[str, Any]:
        """Send a command with an id and return its reply (other frames are kept in self.frames)."""
        self._ids += 1
        cid = f"c{self._ids}"
        await self.comm.send_to(text_data=json.dumps({"type": type, "id": cid, **fields}))
        return await self.until(lambda f: f.get("type") == "reply" and f.get("id") == cid)

    async def until(self, predicate: Any, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"condition not met within {timeout}s; frames so far: {self.frames[-10:]}")
            try:
                frame = await self.recv(timeout=remaining)
            except TimeoutError:
                raise AssertionError(f"condition not met within {timeout}s; last frames: {self.frames[-10:]}") from None
            if predicate(frame):
                return frame

    async def seen_or_until(self, predicate: Any, timeout: float = 10) -> dict[str, Any]:
        """Like `until`, but a matching frame already received (e.g. while awaiting a reply) counts."""
        for frame in self.frames:
            if predicate(frame):
                return frame
        return await self.until(predicate, timeout)

    def events(self, conversation: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("conversation") == conversation and "seq" in f]

    async def close(self) -> None:
        await self.comm.disconnect()

    async def expect_close(self, timeout: float = 5) -> int | None:
        frame = await self.until(lambda f: f["type"] == "__close__", timeout=timeout)
        return frame["code"]


async def connected(
    user: Any | None = None, *, headers: list[tuple[bytes, bytes]] | None = None, timeout: float = 5
) -> Client:
    """A socket that was accepted and has said welcome (its data is kept in `client.welcome`).
    `user` authenticates with a Bearer header; or pass the credentials in `headers` yourself."""
    client, accepted, _ = await Client.connect(user, headers=headers)
    assert accepted
    welcome = await client.recv(timeout=timeout)
    assert welcome["type"] == "welcome"
    client.welcome = welcome["data"]
    return client


@contextlib.asynccontextmanager
async def subscribed_client(user: Any, conversation: str) -> AsyncIterator[Client]:
    """A connected client subscribed to `conversation`, disconnected even when an assertion fails
    (an open socket would outlive the test and its database)."""
    client, accepted, _ = await Client.connect(user)
    try:
        assert accepted
        assert (await client.recv())["type"] == "welcome"
        assert (await client.command("subscribe", conversation=conversation))["ok"] is True
        yield client
    finally:
        await client.close()
