"""Helpers for load-shaped tests over Channels communicators: many sockets opened a bounded number at
a time, and `Tap`, a client that reads continuously and stamps what it receives."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from datetime import datetime
from typing import Any, TypeVar

from tests.support.ws import OPEN_CLIENTS, Client, access_token, connected

T = TypeVar("T")

# How many sockets connect or subscribe at once: every handshake takes the process's one database
# thread, and a few hundred at once would queue past the communicator's connect timeout.
CONCURRENT_SETUP = 25
# A tap reads for at most this long without a frame (asgiref then cancels the app); tests end sooner.
TAP_IDLE_S = 60.0


class Tap:
    """Reads one socket continuously, the way a client that keeps up does, stamping each frame with
    when it was read (wall clock, to compare with the time the server stored an event); commands go
    out without waiting and their replies are looked up afterwards."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.arrivals: list[tuple[float, dict[str, Any]]] = []
        self.replies: dict[str, dict[str, Any]] = {}
        self._ids = 0
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            frame = await self.client.recv(timeout=TAP_IDLE_S)
            self.arrivals.append((time.time(), frame))
            if frame["type"] == "reply":
                self.replies[frame["id"]] = frame
            if frame["type"] == "__close__":
                return

    async def send(self, type: str, **fields: Any) -> str:
        self._ids += 1
        cid = f"t{self._ids}"
        await self.client.send_raw(json.dumps({"type": type, "id": cid, **fields}))
        return cid

    def events(self, conversation: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, f) for t, f in self.arrivals if f.get("conversation") == conversation and "seq" in f]

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def bounded(coros: list[Awaitable[T]]) -> list[T]:
    """Await all of `coros`, at most CONCURRENT_SETUP at a time; their results in order."""
    gate = asyncio.Semaphore(CONCURRENT_SETUP)

    async def one(coro: Awaitable[T]) -> T:
        async with gate:
            return await coro

    return list(await asyncio.gather(*(one(c) for c in coros)))


def people(make_user: Any, n: int) -> tuple[list[Any], list[str]]:
    """n users and an access token for each, minted here rather than by each socket: the setup then
    takes the process's one database thread once, not once per socket."""
    users = [make_user() for _ in range(n)]
    return users, [access_token(u) for u in users]


async def subscribed(token: str, conversations: list[str]) -> tuple[Client, dict[str, int]]:
    """A socket authenticated with `token`, subscribed to `conversations`, and the head_seq each
    subscribe answered."""
    client = await connected(headers=[(b"authorization", f"Bearer {token}".encode())])
    heads = {}
    for conv in conversations:
        reply = await client.command("subscribe", conversation=conv)
        assert reply["ok"] is True, reply
        heads[conv] = reply["head_seq"]
    return client, heads


async def close_all(clients: list[Client]) -> None:
    """Disconnect these clients together (the suite's teardown would close them one by one)."""
    await bounded([client.close() for client in clients])
    for client in clients:
        OPEN_CLIENTS.remove(client)


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank p-th percentile of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def since_stored(arrived: float, frame: dict[str, Any]) -> float:
    """Seconds from the event's storing (its `ts`, taken inside the writing transaction) to its arrival."""
    return arrived - datetime.fromisoformat(frame["ts"]).timestamp()
