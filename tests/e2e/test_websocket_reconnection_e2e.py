"""Resume across a server crash: a Python client (`chatclient`, clients/python) keeps chatting while
the ASGI server process it is connected to is SIGKILLed and restarted by `manage.py serve`; at the
end its transcript equals the log exactly and every acknowledged message is in it. And the agent
worker stopped by SIGTERM (a deploy) mid-run: the run ends at once, and `serve` restarts the worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest
from chatclient import Backoff, ChatClient

from agents.runner import SHUTDOWN_BOUND_S
from tests.support.peer import TERMINAL, Peer
from tests.support.servers import Stack, login, running_stack, shared_conversation
from tests.support.waiting import eventually

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Answers stream slowly enough (150 ms a word) to stop the worker mid-run; a run lost for good would
    # wait 60 s for the reaper, so the worker's own hand-off is what ends a run in a few seconds here.
    with running_stack(env_overrides={"AGENT_OFFLINE_TOKEN_DELAY_MS": "150", "AGENT_LOST_AFTER_S": "60"}) as s:
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


def assistant_conversation(stack: Stack, token: str) -> str:
    """A conversation of the token's user and the assistant, which answers every message."""
    created = httpx.post(
        f"{stack.base_url}/api/conversations/", json={"title": "e2e"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def alive(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    return False


async def test_a_worker_stopped_by_sigterm_ends_its_run_at_once_and_serve_brings_it_back(stack: Stack) -> None:
    alice = login(stack, "alice")
    conv = assistant_conversation(stack, alice)
    peer = await Peer.open(stack, alice)
    await peer.ok("subscribe", conversation=conv, since_seq=0)
    # The help answer (~30 words at 150 ms) streams for ~4 s: members have seen text when the signal lands.
    sent = await peer.send(conv, "hello there")
    await peer.event("agent_delta", sent["run_id"])
    worker = stack.child("runworker")
    worker.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    end = await peer.ended(sent["run_id"])
    took = time.monotonic() - signalled
    if end["type"] == "agent_completed":
        pytest.fail("the run completed before the worker stopped; the test needs a slower run")
    assert end["type"] == "agent_failed"
    assert end["data"]["error"]["code"] == "worker_shutdown"
    assert took < 5, f"the run ended {took:.1f}s after SIGTERM"
    run = [f for f in peer.frames if "seq" in f and f.get("data", {}).get("run_id") == sent["run_id"]]
    types = [f["type"] for f in run]
    assert types.count("agent_started") == 1
    assert [t for t in types if t in TERMINAL] == ["agent_failed"]  # no agent_cancelled: nobody cancelled
    assert types[-1] == "agent_failed"

    # The worker exited 0 on its own, within its bound (SHUTDOWN_BOUND_S, under serve's 10 s kill); serve
    # started another, which answers the next question.
    await eventually(lambda: not alive(worker), timeout=SHUTDOWN_BOUND_S, what="the stopped worker's exit")
    await eventually(lambda: "runworker agent-runs exited with 0" in stack.log(), what="the worker's exit 0")
    await eventually(lambda: [p for p in stack.children("runworker") if p.pid != worker.pid], what="a new worker")
    after = await peer.send(conv, "what is 17 * 23?")
    done = await peer.ended(after["run_id"])
    assert done["type"] == "agent_completed"
    assert "391" in done["data"]["text"]
    await peer.ws.close()
