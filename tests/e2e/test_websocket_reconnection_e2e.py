"""Resume across a server crash: a Python client (`chatclient`, clients/python) keeps chatting while
the ASGI server process it is connected to is SIGKILLed and restarted by `manage.py serve`; at the
end its transcript equals the log exactly and every acknowledged message is in it."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from chatclient import Backoff, ChatClient

from tests.support.servers import Stack, login, running_stack, shared_conversation

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as s:
        yield s


def log_events(stack: Stack, token: str, conv: str) -> list[tuple[int, str]]:
    response = httpx.get(
        f"{stack.base_url}/api/conversations/{conv}/events/?limit=100", headers={"Authorization": f"Bearer {token}"}
    )
    response.raise_for_status()
    return [(e["seq"], e["type"]) for e in response.json()["events"]]


async def test_client_resumes_exactly_after_the_server_process_is_killed(stack: Stack) -> None:
    alice, bob = login(stack, "alice"), login(stack, "bob")
    conv = shared_conversation(stack, alice, "bob")
    acked: list[int] = []
    caught_up = asyncio.Event()

    def on_event(frame: dict[str, Any]) -> None:
        if len(acked) == 40 and frame["seq"] == max(acked):
            caught_up.set()

    reader = ChatClient(stack.ws_url(), token=bob, backoff=Backoff(base_s=0.2, cap_s=2.0), on_event=on_event)
    writer = ChatClient(stack.ws_url(), token=alice, backoff=Backoff(base_s=0.2, cap_s=2.0))
    await reader.start()
    await writer.start()
    await reader.subscribe(conv)
    for i in range(40):
        if i == 15:
            os.kill(stack.child("uvicorn").pid, signal.SIGKILL)
        reply = await asyncio.wait_for(writer.send(conv, f"message {i}", client_msg_id=f"m{i}"), timeout=60)
        assert reply["ok"] is True
        acked.append(reply["message"]["seq"])
    if reader.streams[conv].last_seq != max(acked):
        async with asyncio.timeout(30):
            await caught_up.wait()
    log = log_events(stack, alice, conv)
    assert [(e["seq"], e["type"]) for e in reader.events(conv)] == log
    assert sorted(acked) == [seq for seq, _ in log]  # every acknowledged send, exactly once
    assert [e["data"]["text"] for e in reader.events(conv)] == [f"message {i}" for i in range(40)]
    assert reader.connects >= 2  # the kill really cut both sockets
    assert writer.connects >= 2
    await reader.close()
    await writer.close()
