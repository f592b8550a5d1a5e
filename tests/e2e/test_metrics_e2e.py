"""/metrics on the real deployment: `manage.py serve --processes 2` and the agent worker. A scraper
holding METRICS_TOKEN gets Prometheus text that prometheus_client's parser reads, with every family
docs/operations.md lists, and the numbers are the sum over both server processes and the worker:
traffic driven through both ports is counted exactly, whichever port is scraped."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from tests.e2e.websocket_core.test_complete_websocket_agent_flow_e2e import create_conversation
from tests.support.peer import Peer
from tests.support.servers import Stack, login, running_stack, shared_conversation
from tests.support.waiting import eventually

pytestmark = [pytest.mark.e2e]

TOKEN = "e2e-scrape-" + uuid.uuid4().hex
TYPING_LIMIT = 2  # free tier (bob): typing frames per minute, lowered so one is over it

FAMILIES = {
    "chat_connections": "gauge",
    "chat_users_online": "gauge",
    "chat_subscriptions": "gauge",
    "chat_commands": "counter",
    "chat_command_duration_seconds": "histogram",
    "chat_frames_sent": "counter",
    "chat_bytes_sent": "counter",
    "chat_disconnects": "counter",
    "chat_replays": "counter",
    "chat_delivery_lag_seconds": "histogram",
    "chat_broadcast_duration_seconds": "histogram",
    "chat_rate_limited": "counter",
    "chat_breaker_state": "gauge",
    "chat_event_loop_lag_seconds": "histogram",
    "agent_runs": "counter",
    "agent_queue_wait_seconds": "histogram",
    "agent_time_to_first_event_seconds": "histogram",
    "agent_time_to_first_token_seconds": "histogram",
    "agent_run_duration_seconds": "histogram",
    "agent_tool_duration_seconds": "histogram",
    "agent_runs_incomplete": "counter",
    "process_cpu_seconds_total": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
}

Samples = dict[str, list[tuple[str, dict[str, str], float]]]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    tiers = {"free": {"rates": {"typing": [TYPING_LIMIT, 60]}}}
    with running_stack(processes=2, env_overrides={"METRICS_TOKEN": TOKEN, "CHAT_TIERS_JSON": json.dumps(tiers)}) as s:
        yield s


def scrape(stack: Stack, index: int) -> tuple[dict[str, str], Samples]:
    """(family → type, family → samples) from one server process's /metrics."""
    response = httpx.get(stack.http_url(index) + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        samples[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return types, samples


def status(stack: Stack, index: int, headers: dict[str, str]) -> int:
    return httpx.get(stack.http_url(index) + "/metrics", headers=headers, timeout=10).status_code


def total(samples: Samples, family: str, suffix: str = "", **labels: str) -> float:
    return sum(
        value
        for name, have, value in samples.get(family, [])
        if name == family + suffix and all(have.get(k) == v for k, v in labels.items())
    )


async def test_a_scraper_gets_every_family_summed_over_both_servers_and_the_worker(stack: Stack) -> None:
    assert status(stack, 0, {}) == 401
    assert status(stack, 1, {"Authorization": "Bearer nope"}) == 401

    alice, bob = login(stack, "alice"), login(stack, "bob")
    room = shared_conversation(stack, alice, "bob")
    on0, on1 = await Peer.open(stack, alice, 0), await Peer.open(stack, bob, 1)
    for peer in (on0, on1):
        assert (await peer.command("subscribe", conversation=room))["ok"] is True
    sends = [(on0, "a1"), (on1, "b1"), (on0, "a2"), (on1, "b2"), (on0, "a3")]
    for peer, text in sends:
        assert (await peer.command("send", conversation=room, client_msg_id=uuid.uuid4().hex, text=text))["ok"]
    for peer in (on0, on1):
        await peer.until(lambda f: f.get("type") == "message" and f["data"]["text"] == "a3")

    typing = [await on1.command("typing", conversation=room, state="start") for _ in range(TYPING_LIMIT + 1)]
    # The one over the limit is dropped, not refused (a lost typing notice costs the client no error), and
    # still counted as rate limited.
    assert [r["ok"] for r in typing] == [True] * (TYPING_LIMIT + 1)

    # A handshake with a bad token: accepted, then closed 4401 by the server.
    bad = await websockets.connect(
        stack.ws_url(1), subprotocols=["chat.v1"], additional_headers={"Authorization": "Bearer not-a-token"}
    )
    with pytest.raises(ConnectionClosed) as closed:
        await bad.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401

    # One agent run on the worker.
    agent_room = create_conversation(stack, alice)
    assert (await on0.command("subscribe", conversation=agent_room))["ok"] is True
    prompt = await on0.command("send", conversation=agent_room, client_msg_id="ask", text="what is 6 * 7?")
    assert prompt["ok"] is True
    await on0.until(lambda f: f.get("type") == "agent_completed" and f["conversation"] == agent_room, timeout=30)

    message_frames = sum(1 for peer in (on0, on1) for f in peer.frames if f.get("type") == "message")

    def settled() -> tuple[Samples, Samples] | None:
        # Each process publishes its batched counts every second: poll until both ports agree.
        (_, s0), (_, s1) = scrape(stack, 0), scrape(stack, 1)
        checks = [
            total(s0, "chat_commands", "_total", command="send", outcome="ok") == len(sends) + 1,
            total(s0, "chat_frames_sent", "_total", type="message") == message_frames,
            total(s0, "agent_runs", "_total", status="completed") == 1,
            total(s0, "chat_connections") == 2,
            total(s0, "chat_subscriptions") == 3,
            _same_counts(s0, s1),
        ]
        return (s0, s1) if all(checks) else None

    await eventually(settled, 20, "both ports to report the traffic of both, summed", interval=0.25)
    types, samples = scrape(stack, 1)
    for family, kind in FAMILIES.items():
        assert types.get(family) == kind, (family, types.get(family))
        assert samples[family], family

    # Exact sums over the two server processes.
    assert total(samples, "chat_commands", "_total", command="send", outcome="ok") == len(sends) + 1
    assert total(samples, "chat_commands", "_total", command="typing", outcome="ok") == TYPING_LIMIT + 1
    assert total(samples, "chat_commands", "_total", command="typing", outcome="rate_limited") == 0
    assert total(samples, "chat_rate_limited", "_total", **{"class": "typing", "tier": "free"}) == 1
    assert total(samples, "chat_frames_sent", "_total", type="message") == message_frames
    assert total(samples, "chat_disconnects", "_total", code="4401") == 1
    assert total(samples, "chat_users_online") == 2  # alice on port 0, bob on port 1
    assert total(samples, "chat_delivery_lag_seconds", "_count") >= 2 * len(sends)
    assert total(samples, "chat_command_duration_seconds", "_count", command="send") == len(sends) + 1
    assert total(samples, "chat_bytes_sent", "_total") > 0
    # The worker's families: one completed run of the pro tier, one calculator call.
    assert total(samples, "agent_runs", "_total", status="completed", tier="pro") == 1
    assert total(samples, "agent_queue_wait_seconds", "_count", tier="pro") == 1
    assert total(samples, "agent_time_to_first_token_seconds", "_count") == 1
    assert total(samples, "agent_tool_duration_seconds", "_count", tool="calculator", ok="true") == 1
    # process_*: one series per live process, two servers and the worker.
    roles = sorted(labels["role"] for _, labels, _ in samples["process_resident_memory_bytes"])
    assert roles == ["server", "server", "worker"]
    assert len({labels["pid"] for _, labels, _ in samples["process_resident_memory_bytes"]}) == 3
    assert {labels["dependency"] for _, labels, _ in samples["chat_breaker_state"]} >= {"postgres", "redis"}
    for peer in (on0, on1):
        await peer.ws.close()


def _same_counts(a: Samples, b: Samples) -> bool:
    """Two scrapes agree on every counter (gauges and process figures move between them)."""
    keys = [f for f in a if f.startswith(("chat_commands", "chat_frames_sent", "agent_runs"))]
    return all(sorted(a[f], key=repr) == sorted(b.get(f, []), key=repr) for f in keys)
