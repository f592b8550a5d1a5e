"""Reliability under a sustained mixed load, through the real stack as `make run` serves it: two server
processes on one port, the agent worker, PostgreSQL and Redis. Forty-eight people chat in twelve rooms at a
steady pace while four of them also ask the assistant questions; meanwhile sockets are cut without a close
handshake (a lost network) and one server process is killed (its clients reconnect to the other at the same
URL) and restarted by `manage.py serve`. Every client is the product's own
Python client (clients/python), which reconnects with backoff and resumes from the last seq it saw.

Asserted, the seed's figures: more than 50 messages a second acknowledged, under 2 s from a question to
its run starting (the server's own `queued_ms`), under 5 MB of server memory per connection, at least
99 % of connections stable and under 5 % failing for good, and the core promises: every acknowledged
message in the log exactly once, and every client's transcript equal to the log, seq for seq.
The figures are printed; tests/benchmarks/ measures the same at larger scale.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import pytest
from chatclient import Backoff, ChatClient

from tests.support.limits import LOAD_TEST_ENV
from tests.support.servers import Stack, running_stack
from tests.support.waiting import eventually

# solo: `make test` runs it alone, after the parallel run. Its seed figure (> 50 messages a second through a
# kill and cuts) is the machine's throughput: with a browser test in the other worker it measured 43-49/s.
pytestmark = [pytest.mark.e2e, pytest.mark.solo, pytest.mark.timeout(240)]

# 96 messages a second offered: the floor asserted is the seed's 50. Each person awaits a send's reply before
# the next, so a person's pace is bounded by the round trip, which a machine busy with the rest of the suite
# stretches: many people at a moderate pace (not a few fast ones) keep the offered rate independent of it.
PEOPLE = 48
ROOM_SIZE = 4
ASKERS = 4
LOAD_S = 12.0
SENDS_PER_PERSON_PER_S = 2.0
CUTS = 6
KILL_AT_S = 4.0
PASSWORD = "reliability-password"

MIN_MESSAGES_PER_S = 50.0
MAX_QUEUED_MS = 2000
MAX_BYTES_PER_CONNECTION = 5 * 1024 * 1024
MIN_STABLE = 0.99
MAX_PERMANENT_FAILURES = 0.05

CREATE_PEOPLE = """
import json
from django.contrib.auth.hashers import make_password
from rest_framework_simplejwt.tokens import RefreshToken
from chat.models import User
from chat.services.conversations import user_create
hashed = make_password({password!r})
User.set_password = lambda self, raw: setattr(self, "password", hashed)  # one hash for all: same login path
tokens = {{}}
for name in json.loads({names!r}):
    tokens[name] = str(RefreshToken.for_user(user_create(username=name, password={password!r})).access_token)
print("TOKENS " + json.dumps(tokens))
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    env = {**LOAD_TEST_ENV, "AGENT_OFFLINE_TOKEN_DELAY_MS": "5"}
    with running_stack(processes=2, ports="shared", env_overrides=env) as running:
        yield running


def create_people(stack: Stack, names: list[str]) -> dict[str, str]:
    """Users made in one manage.py process, with access tokens as the token endpoint mints them."""
    out = stack.manage("shell", "-c", CREATE_PEOPLE.format(names=json.dumps(names), password=PASSWORD))
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("TOKENS ")), None)
    assert line is not None, out.stdout[-2000:] + out.stderr[-2000:]
    return dict(json.loads(line.removeprefix("TOKENS ")))


def conversation(http: httpx.Client, owner: str, members: list[str], *, agent: bool) -> str:
    headers = {"Authorization": f"Bearer {owner}"}
    created = http.post("/api/conversations/", json={"title": "load", "agent": agent}, headers=headers)
    created.raise_for_status()
    conv = str(created.json()["id"])
    for member in members:
        http.post(
            f"/api/conversations/{conv}/members/", json={"username": member, "role": "member"}, headers=headers
        ).raise_for_status()
    return conv


def full_log(http: httpx.Client, token: str, conv: str) -> list[dict[str, Any]]:
    """The conversation's whole durable log over REST, paged back to its start, in seq order."""
    events: list[dict[str, Any]] = []
    before: int | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"before_seq": before} if before is not None else {})}
        response = http.get(
            f"/api/conversations/{conv}/events/", params=params, headers={"Authorization": f"Bearer {token}"}
        )
        response.raise_for_status()
        body = response.json()
        events = body["events"] + events
        if not body["has_more"]:
            return events
        before = body.get("next_before_seq", body["events"][0]["seq"])


@dataclass
class Person:
    name: str
    token: str
    room: str
    client: ChatClient
    acked: list[str] = field(default_factory=list)  # client_msg_ids the server acknowledged
    refused: list[dict[str, Any]] = field(default_factory=list)


async def chat_steadily(person: Person, until: float) -> None:
    """Send at the schedule's pace (never faster; right away when behind) until `until`."""
    interval = 1.0 / SENDS_PER_PERSON_PER_S
    next_at = time.monotonic()
    number = 0
    while time.monotonic() < until:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # the pacing schedule, not a wait for a state
        next_at += interval
        key = f"{person.name}-{number}"
        number += 1
        reply = await person.client.send(person.room, key, client_msg_id=key)
        (person.acked.append(key) if reply.get("ok") else person.refused.append(reply))


async def ask_repeatedly(person: Person, conv: str, until: float, started: list[int]) -> None:
    """Ask, wait for the answer to finish, ask again: each run's `queued_ms` is the server's own wait."""
    number = 0
    while time.monotonic() < until:
        number += 1
        reply = await person.client.send(
            conv, f"what is {number} + {number}?", client_msg_id=f"q-{person.name}-{number}"
        )
        assert reply.get("ok"), reply
        run_id = reply["run_id"]

        def ended(run_id: str = run_id) -> dict[str, Any] | None:
            mine = [e for e in person.client.events(conv) if e["data"].get("run_id") == run_id]
            if any(e["type"] in ("agent_completed", "agent_failed", "agent_cancelled") for e in mine):
                return next(e for e in mine if e["type"] == "agent_started")
            return None

        start = await eventually(ended, timeout=30, what=f"run {run_id} of {person.name} to end")
        started.append(int(start["data"]["queued_ms"]))


def server_rss(stack: Stack) -> dict[int, int]:
    return {p.pid: p.memory_info().rss for p in stack.children("uvicorn")}


async def test_sustained_load_with_drops_and_a_server_restart_keeps_every_promise(stack: Stack) -> None:
    names = [f"load{uuid.uuid4().hex[:6]}{i}" for i in range(PEOPLE)]
    tokens = create_people(stack, names)
    rng = random.Random(7)
    readers: dict[str, str] = {}  # conversation -> a member's token, to read its log
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        rooms = [
            conversation(http, tokens[names[i]], names[i + 1 : i + ROOM_SIZE], agent=False)
            for i in range(0, PEOPLE, ROOM_SIZE)
        ]
        asked = [conversation(http, tokens[name], [], agent=True) for name in names[:ASKERS]]
    readers.update({room: tokens[names[i * ROOM_SIZE]] for i, room in enumerate(rooms)})
    readers.update({conv: tokens[name] for conv, name in zip(asked, names, strict=False)})

    await eventually(lambda: len(stack.listening()) == 2, timeout=30, what="both server processes accepting")
    rss_before = server_rss(stack)
    people = [
        Person(
            name,
            tokens[name],
            rooms[i // ROOM_SIZE],
            ChatClient(stack.ws_url(), token=tokens[name], backoff=Backoff(base_s=0.2, cap_s=2.0)),
        )
        for i, name in enumerate(names)
    ]
    await asyncio.gather(*(p.client.start() for p in people))
    await asyncio.gather(*(p.client.subscribe(p.room) for p in people))
    await asyncio.gather(*(p.client.subscribe(conv) for p, conv in zip(people, asked, strict=False)))
    connections = len(people)

    started_waits: list[int] = []
    began = time.monotonic()
    until = began + LOAD_S
    load = [asyncio.create_task(chat_steadily(p, until)) for p in people]
    load += [
        asyncio.create_task(ask_repeatedly(p, conv, until, started_waits))
        for p, conv in zip(people, asked, strict=False)
    ]

    # The faults, on a fixed schedule while the load runs: cut sockets, kill the server process holding the
    # most of them (its clients reconnect to the other one at the same URL while serve restarts it).
    survivor = {p.pid for p in stack.children("uvicorn")}
    victim = max(stack.children("uvicorn"), key=stack.connections)
    cut = killed = 0
    for step in range(CUTS + 1):
        await asyncio.sleep(LOAD_S / (CUTS + 2))  # the fault schedule itself, not a wait for a state
        if step == 2:
            killed = stack.connections(victim)  # the sockets the kill cuts
            os.kill(victim.pid, signal.SIGKILL)
            survivor.discard(victim.pid)
        elif rng.choice([p for p in people if not p.client.stale]).client.drop():
            cut += 1
    await asyncio.gather(*load)
    elapsed = time.monotonic() - began
    rss_after = server_rss(stack)

    # Every client catches up to the head of each of its conversations.
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        logs = {conv: full_log(http, token, conv) for conv, token in readers.items()}

    def caught_up() -> bool:
        return all(
            p.client.streams[conv].last_seq == logs[conv][-1]["seq"] for p in people for conv in p.client.streams
        )

    await eventually(caught_up, timeout=30, what="every client at the head of its conversations")

    # Figures.
    acked = sum(len(p.acked) for p in people) + len(started_waits)
    rate = acked / elapsed
    stable = [
        p
        for p in people
        if not p.client.stale
        and all(
            [(e["seq"], e["type"], e["data"]) for e in p.client.events(conv)]
            == [(e["seq"], e["type"], e["data"]) for e in logs[conv]]
            for conv in p.client.streams
        )
    ]
    never_back = [p for p in people if p.client.stale]
    surviving = [pid for pid in survivor if pid in rss_before and pid in rss_after]
    per_connection = max(
        (rss_after[pid] - rss_before[pid]) / max(1, stack.connections(psutil.Process(pid))) for pid in surviving
    )
    print(
        f"\nreliability: {acked} messages acknowledged in {elapsed:.1f} s = {rate:.0f}/s over {connections} "
        f"connections on 2 processes; {cut} sockets cut, 1 process killed; reconnects "
        f"{sum(p.client.connects for p in people) - connections}; runs {len(started_waits)}, queued_ms "
        f"p50 {statistics.median(started_waits) if started_waits else 0:.0f} max {max(started_waits, default=0)}; "
        f"server memory per connection {per_connection / 1024:.0f} KB; "
        f"stable {len(stable)}/{connections}, failed for good {len(never_back)}"
    )

    assert not [p.refused for p in people if p.refused], "sends refused under load"
    assert rate > MIN_MESSAGES_PER_S, f"{rate:.1f} messages/s"
    assert started_waits, "no question was answered"
    assert max(started_waits) < MAX_QUEUED_MS, started_waits
    assert per_connection < MAX_BYTES_PER_CONNECTION
    assert len(stable) / connections >= MIN_STABLE, [p.name for p in people if p not in stable]
    assert len(never_back) / connections < MAX_PERMANENT_FAILURES
    assert cut == CUTS, f"only {cut} sockets were cut"
    assert killed > 0
    assert sum(p.client.connects for p in people) >= connections + cut + killed  # each cut socket came back

    # Every acknowledged message is in its room's log exactly once, and nothing else was written there.
    for room in rooms:
        keys = [key for p in people if p.room == room for key in p.acked]
        texts = [e["data"]["text"] for e in logs[room] if e["type"] == "message"]
        assert sorted(texts) == sorted(keys)

    await asyncio.gather(*(p.client.close() for p in people))
