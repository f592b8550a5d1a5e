"""A user never holds more sockets, nor sends more messages, than the tier allows while Redis is slow.

The attack this pins: Redis alive but lagging (other load on it) made the limiter's calls time
out, and each timeout granted the socket: one user held 56 sockets against a limit of 20. Here the
real stack (`manage.py serve`, two uvicorn processes) runs on a private redis-server
(tests/support/faults.py BusyRedisServer) that a side connection keeps busy with DEBUG SLEEP
slices longer than the limiter waits; a user then opens three times the tier's sockets across both
processes and sends more than the tier's messages. Each process allows only its share of each limit
while Redis cannot answer in time (docs/operations.md, "Limits while Redis is slow or down").
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tests.e2e.websocket_core.test_complete_websocket_agent_flow_e2e import create_conversation
from tests.support.faults import BusyRedisServer
from tests.support.servers import Stack, login, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CONNECTIONS = 4  # free tier (bob): sockets
MESSAGES = 5  # free tier: messages per minute
SLICE_S = 1.0  # Redis busy in 1 s slices: longer than any limiter call waits (0.5 s)


@pytest.fixture(scope="module")
def busy_redis() -> Iterator[BusyRedisServer]:
    with BusyRedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def stack(busy_redis: BusyRedisServer) -> Iterator[Stack]:
    tiers = {"free": {"connections": CONNECTIONS, "rates": {"messages": [MESSAGES, 60]}}}
    env = {"REDIS_URL": busy_redis.url, "CHAT_TIERS_JSON": json.dumps(tiers), "AGENT_OFFLINE_TOKEN_DELAY_MS": "0"}
    with running_stack(processes=2, env_overrides=env) as s:
        yield s


async def first_frame(stack: Stack, token: str, process: int) -> tuple[Any, dict[str, Any]]:
    """Open a socket; its first frame (`welcome`), or {"close": code} when it was refused."""
    ws = await websockets.connect(
        stack.ws_url(process),
        subprotocols=[Subprotocol("chat.v1")],
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=30,
        ping_interval=None,
    )
    try:
        return ws, json.loads(await asyncio.wait_for(ws.recv(), 30))
    except ConnectionClosed as closed:
        return ws, {"close": closed.rcvd.code if closed.rcvd else None}


async def send_messages(ws: Any, conv: str, count: int) -> list[dict[str, Any]]:
    """`count` sends on one socket, one after the other; their replies."""
    replies = []
    for n in range(count):
        command = {"type": "send", "id": f"s{n}", "conversation": conv, "client_msg_id": uuid.uuid4().hex, "text": "m"}
        await ws.send(json.dumps(command))
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if frame.get("type") == "reply" and frame.get("id") == command["id"]:
                replies.append(frame)
                break
    return replies


async def test_sockets_and_sends_stay_within_the_tier_while_redis_is_slow(
    stack: Stack, busy_redis: BusyRedisServer
) -> None:
    bob = login(stack, "bob")
    conv = create_conversation(stack, bob, agent=False)
    sockets: list[Any] = []
    try:
        with busy_redis.busy(SLICE_S):
            opened = await asyncio.gather(*[first_frame(stack, bob, i % 2) for i in range(3 * CONNECTIONS)])
            sockets = [ws for ws, _ in opened]
            welcomed = [ws for ws, frame in opened if frame.get("type") == "welcome"]
            refused = [frame for _, frame in opened if "close" in frame]
            assert len(welcomed) <= CONNECTIONS, f"{len(welcomed)} sockets for a tier of {CONNECTIONS}"
            assert len(welcomed) + len(refused) == 3 * CONNECTIONS
            assert {frame["close"] for frame in refused} <= {4429}
            # Sends from every open socket, twice what the tier allows in a minute.
            per_socket = 2 * MESSAGES // max(1, len(welcomed)) + 1
            replies = await asyncio.gather(*[send_messages(ws, conv, per_socket) for ws in welcomed])
            answers = [answer for answers_of_one in replies for answer in answers_of_one]
        allowed = [a for a in answers if a["ok"]]
        assert len(allowed) <= MESSAGES, f"{len(allowed)} messages for a tier of {MESSAGES} a minute"
        assert {a["error"]["code"] for a in answers if not a["ok"]} <= {"rate_limited", "unavailable"}
    finally:
        for ws in sockets:
            await ws.close()
