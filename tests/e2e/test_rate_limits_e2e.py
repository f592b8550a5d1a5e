"""Limits hold exactly across server processes: the real stack with two uvicorn processes
sharing one Redis. N commands are allowed, the N+1th is refused on either process; the per-tier
connection limit closes the extra socket with 4429 on either process; a client hammering after
being told is closed with 4400; the per-IP token limit holds across processes too.

The limits are lowered for this stack through CHAT_TIERS_JSON, the documented override."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.e2e.websocket_core.test_complete_websocket_agent_flow_e2e import create_conversation
from tests.support.peer import Peer
from tests.support.servers import Stack, login, running_stack

pytestmark = [pytest.mark.e2e]

MESSAGES = 5  # free tier (bob): messages per minute
RUNS = 2  # pro tier (alice): agent runs per minute
CONNECTIONS = 3  # free tier: sockets per user
HAMMER = 3
TOKEN_REFRESHES = 6  # per IP per minute


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    tiers = {
        "free": {"connections": CONNECTIONS, "rates": {"messages": [MESSAGES, 60]}},
        "pro": {"rates": {"agent_runs": [RUNS, 60]}},
    }
    with running_stack(
        processes=2,
        env_overrides={
            "CHAT_TIERS_JSON": json.dumps(tiers),
            "CHAT_RATE_HAMMER_LIMIT": str(HAMMER),
            "CHAT_LOGIN_RATE_LIMIT": str(TOKEN_REFRESHES),
        },
    ) as s:
        yield s


async def send(peer: Peer, conv: str, text: str, client_msg_id: str | None = None) -> dict[str, Any]:
    return await peer.command("send", conversation=conv, client_msg_id=client_msg_id or uuid.uuid4().hex, text=text)


def stored_texts(stack: Stack, access: str, conv: str) -> list[str]:
    response = httpx.get(
        f"{stack.base_url}/api/conversations/{conv}/events/",
        params={"limit": 100},
        headers={"Authorization": f"Bearer {access}"},
    )
    response.raise_for_status()
    return [e["data"]["text"] for e in response.json()["events"] if e["type"] == "message"]


async def close_code(peer: Peer, timeout: float = 10) -> int | None:
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            await peer.next(timeout=max(0.01, deadline - time.monotonic()))
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    raise AssertionError("the socket was not closed")


async def test_message_limit_is_exact_across_processes_and_hammering_closes_4400(stack: Stack) -> None:
    bob = login(stack, "bob")
    conv = create_conversation(stack, bob, agent=False)
    on0, on1 = await Peer.open(stack, bob, 0), await Peer.open(stack, bob, 1)
    assert on0.frames[0]["data"]["limits"]["rates"]["messages"] == {"limit": MESSAGES, "window_ms": 60_000}

    first_id = uuid.uuid4().hex
    answers = [await send((on0, on1)[i % 2], conv, f"m{i}", first_id if i == 0 else None) for i in range(MESSAGES)]
    assert all(a["ok"] for a in answers), answers
    for peer in (on1, on0):  # the N+1th is refused on either process
        refused = await send(peer, conv, "one too many")
        assert refused["ok"] is False
        assert refused["error"]["code"] == "rate_limited"
        assert 0 < refused["error"]["retry_after_ms"] <= 60_000
    # Refused sends left nothing behind; a resend of a stored message still answers (no quota needed).
    assert stored_texts(stack, bob, conv) == [f"m{i}" for i in range(MESSAGES)]
    again = await send(on1, conv, "m0", first_id)
    assert again["ok"] is True
    assert again["duplicate"] is True

    # on0 was told to wait; it keeps sending anyway: HAMMER more refusals are tolerated, the next
    # one closes it. (Pings are still within their own budget and are not refused meanwhile.)
    for i in range(HAMMER):
        refused = await send(on0, conv, f"hammer {i}")
        assert refused["error"]["code"] == "rate_limited"
    assert (await on0.command("ping"))["ok"] is True
    await on0.ws.send(json.dumps({"type": "send", "conversation": conv, "client_msg_id": "x", "text": "x"}))
    assert await close_code(on0) == 4400
    assert (await on1.command("ping"))["ok"] is True  # the other socket is unaffected
    assert stored_texts(stack, bob, conv) == [f"m{i}" for i in range(MESSAGES)]
    await on1.ws.close()


async def test_agent_run_limit_is_exact_across_processes(stack: Stack) -> None:
    alice = login(stack, "alice")
    with_agent = create_conversation(stack, alice)
    people_only = create_conversation(stack, alice, agent=False)
    on0, on1 = await Peer.open(stack, alice, 0), await Peer.open(stack, alice, 1)
    started = [await send((on0, on1)[i % 2], with_agent, f"what is {i} + 1?") for i in range(RUNS)]
    assert all(s["ok"] and s.get("run_id") for s in started), started
    for peer in (on0, on1):
        refused = await send(peer, with_agent, "what is 9 + 9?")
        assert refused["ok"] is False
        assert refused["error"]["code"] == "rate_limited"
        # The refusal names the limit that refused, with its numbers and the tier.
        quota = f"agent-run quota reached: {RUNS} runs per minute on the pro tier"
        assert refused["error"]["message"].startswith(quota)
    # The message budget was not spent by the refusals: people-only chat still works.
    assert (await send(on1, people_only, "still here"))["ok"] is True
    assert stored_texts(stack, alice, with_agent)[: RUNS + 1] == [f"what is {i} + 1?" for i in range(RUNS)]
    assert len([t for t in stored_texts(stack, alice, with_agent) if t == "what is 9 + 9?"]) == 0
    await on0.ws.close()
    await on1.ws.close()


async def open_or_code(stack: Stack, access: str, index: int) -> Peer | int:
    ws = await websockets.connect(
        stack.ws_url(index), subprotocols=["chat.v1"], additional_headers={"Authorization": f"Bearer {access}"}
    )
    peer = Peer(ws)
    try:
        frame = await peer.next(timeout=10)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else -1
    assert frame["type"] == "welcome"
    return peer


async def test_connection_limit_per_user_holds_across_processes(stack: Stack) -> None:
    bob = login(stack, "bob")
    peers = []
    for index in (0, 1, 0):
        opened = await open_or_code(stack, bob, index)
        assert isinstance(opened, Peer), f"socket {len(peers) + 1} of {CONNECTIONS} refused with {opened}"
        peers.append(opened)
    assert await open_or_code(stack, bob, 1) == 4429
    assert await open_or_code(stack, bob, 0) == 4429
    alice = login(stack, "alice")  # another user is not affected
    other = await open_or_code(stack, alice, 1)
    assert isinstance(other, Peer)
    await other.ws.close()

    await peers.pop().ws.close()  # a closed socket gives its slot back (released on disconnect)
    deadline = time.monotonic() + 10
    while True:
        opened = await open_or_code(stack, bob, 1)
        if isinstance(opened, Peer):
            break
        assert opened == 4429, opened
        assert time.monotonic() < deadline, "the closed socket's slot was never released"
    await opened.ws.close()
    for peer in peers:
        await peer.ws.close()


def test_token_refresh_limit_per_ip_holds_across_processes(stack: Stack) -> None:
    codes = [
        httpx.post(f"{stack.http_url(i % 2)}/api/auth/token/refresh/", json={"refresh": "not-a-token"}).status_code
        for i in range(TOKEN_REFRESHES)
    ]
    assert codes == [401] * TOKEN_REFRESHES
    for index in (0, 1):
        refused = httpx.post(f"{stack.http_url(index)}/api/auth/token/refresh/", json={"refresh": "not-a-token"})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
