"""A socket client for the e2e tests against the real stack (`running_stack`): it knows only
docs/protocol.md — `chat.v1` over a real WebSocket with a Bearer token from the REST token endpoint."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import websockets

from tests.support.servers import Stack

TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")


class Peer:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []  # every frame received, welcome first
        self.welcome: dict[str, Any] = {}
        self.n = 0

    @classmethod
    async def open(cls, stack: Stack, access: str, index: int = 0) -> Peer:
        ws = await websockets.connect(
            stack.ws_url(index), subprotocols=["chat.v1"], additional_headers={"Authorization": f"Bearer {access}"}
        )
        assert ws.subprotocol == "chat.v1"
        peer = cls(ws)
        welcome = await peer.next()
        assert welcome["type"] == "welcome"
        peer.welcome = welcome["data"]
        return peer

    async def next(self, timeout: float = 15) -> dict[str, Any]:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.frames.append(frame)
        return frame

    async def until(self, predicate: Any, timeout: float = 20) -> dict[str, Any]:
        """The first frame, already received or yet to come, that matches: a broadcast may arrive
        before the reply to the command that caused it."""
        for frame in self.frames:
            if predicate(frame):
                return frame
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.next(timeout=max(0.01, deadline - time.monotonic()))
            if predicate(frame):
                return frame

    async def command(self, type: str, **fields: Any) -> dict[str, Any]:
        self.n += 1
        cid = f"q{self.n}"
        await self.ws.send(json.dumps({"type": type, "id": cid, **fields}))
        return await self.until(lambda f: f.get("type") == "reply" and f.get("id") == cid)

    async def ok(self, type: str, **fields: Any) -> dict[str, Any]:
        """A command that must succeed: its reply."""
        reply = await self.command(type, **fields)
        assert reply["ok"] is True, reply
        return reply

    async def send(self, conversation: str, text: str) -> dict[str, Any]:
        return await self.ok("send", conversation=conversation, client_msg_id=uuid.uuid4().hex, text=text)

    async def event(self, type: str, run_id: str) -> dict[str, Any]:
        return await self.until(lambda f: f.get("type") == type and f.get("data", {}).get("run_id") == run_id)

    async def ended(self, run_id: str) -> dict[str, Any]:
        return await self.until(lambda f: f.get("type") in TERMINAL and f["data"].get("run_id") == run_id)
