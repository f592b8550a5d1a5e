"""`manage.py serve` as `make run` starts it, with two server processes on ONE port (SO_REUSEPORT,
chatsite/uvicorn_server.py): both processes take connections at the one URL, losing one leaves the URL
working, and a process told to stop (SIGTERM, a deploy) closes its sockets with 1012 after writing what
they had queued, so a client that resumes elsewhere has every message exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import psutil
import pytest
import websockets

from tests.support.limits import LOAD_TEST_ENV
from tests.support.peer import Peer
from tests.support.servers import Stack, login, running_stack, shared_conversation
from tests.support.waiting import eventually

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # The tiers' connection limits lifted: one user opens two dozen sockets here.
    with running_stack(processes=2, ports="shared", env_overrides=LOAD_TEST_ENV) as running:
        yield running


def server_of(stack: Stack, peer: Peer) -> psutil.Process:
    """The server process holding `peer`'s connection (its end of the TCP connection)."""
    client_port = peer.ws.local_address[1]
    for child in stack.children("uvicorn"):
        if any(c.raddr and c.raddr.port == client_port for c in child.net_connections("tcp")):
            return child
    raise AssertionError(f"no server process holds the connection from port {client_port}")


async def both_listening(stack: Stack) -> None:
    await eventually(lambda: len(stack.listening()) == 2, timeout=30, what="both server processes listening")


async def close_code(peer: Peer) -> int:
    """Read until the server closes the socket: the code of its close frame."""
    try:
        while True:
            await peer.next(timeout=15)
    except websockets.ConnectionClosed as exc:
        received = exc.rcvd
    assert received is not None, "closed without a close frame"
    return received.code


def message_seqs(peer: Peer, conversation: str) -> list[int]:
    return [f["seq"] for f in peer.frames if f.get("type") == "message" and f.get("conversation") == conversation]


async def test_both_processes_serve_the_one_url_and_it_outlives_one_of_them(stack: Stack) -> None:
    await both_listening(stack)
    token = login(stack, "alice")
    peers = [await Peer.open(stack, token) for _ in range(16)]
    # The kernel hashes each connection to one of the two sockets: all 16 on one is a 1 in 32,768 chance.
    holders = {server_of(stack, peer).pid for peer in peers}
    assert holders == {p.pid for p in stack.listening()}, holders
    victim = stack.listening()[0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    # While serve restarts it, the URL keeps working: the dead process's socket left the group with it.
    more = [await Peer.open(stack, token) for _ in range(8)]
    for peer in [*peers, *more]:
        await peer.ws.close()


async def test_a_stopping_process_closes_1012_and_its_clients_resume_elsewhere_with_nothing_lost(
    stack: Stack,
) -> None:
    await both_listening(stack)
    alice, bob = login(stack, "alice"), login(stack, "bob")
    conversation = shared_conversation(stack, alice, "bob", title="restart")
    watcher = await Peer.open(stack, alice)
    await watcher.ok("subscribe", conversation=conversation)
    victim = server_of(stack, watcher)
    sender = await Peer.open(stack, bob)
    for _ in range(40):  # a sender on the other process, which stays up
        if server_of(stack, sender).pid != victim.pid:
            break
        await sender.ws.close()
        sender = await Peer.open(stack, bob)
    assert server_of(stack, sender).pid != victim.pid
    for n in range(5):
        await sender.send(conversation, f"before {n}")
    await watcher.until(lambda f: f.get("type") == "message" and f.get("seq") == 5)

    os.kill(victim.pid, signal.SIGTERM)

    async def send_meanwhile() -> None:
        for n in range(5):
            await sender.send(conversation, f"during {n}")

    sends = asyncio.create_task(send_meanwhile())
    assert await close_code(watcher) == 1012
    await sends
    held = message_seqs(watcher, conversation)
    assert held == list(range(1, len(held) + 1)), held  # in order, no gap, nothing twice
    # The stopped process is gone well within serve's 10 s (it drains for at most CHAT_SHUTDOWN_DRAIN_S).
    victim.wait(timeout=8)

    resumed = await Peer.open(stack, alice)
    subscribed = await resumed.ok("subscribe", conversation=conversation, since_seq=held[-1])
    assert subscribed["head_seq"] == 10
    if held[-1] < 10:  # the rest comes as a replay (the drain may have written all ten before the close)
        await resumed.until(lambda f: f.get("type") == "message" and f.get("seq") == 10)
    assert held + message_seqs(resumed, conversation) == list(range(1, 11))
    texts = [f["data"]["text"] for p in (watcher, resumed) for f in p.frames if f.get("type") == "message"]
    assert sorted(texts) == sorted([f"before {n}" for n in range(5)] + [f"during {n}" for n in range(5)])
    for peer in (resumed, sender):
        await peer.ws.close()
