"""Chaos suite: chat traffic and agent runs while clients, server processes, the agent worker and Redis
are knocked over, then an exact check of what every client ended up with against the durable log.

Starts a private `redis-server` on a free port (tests/support/faults.py) and the real stack against it
(`manage.py serve`: P uvicorn processes + the agent worker, fresh PostgreSQL database;
tests/support/servers.py), makes C agent-enabled conversations shared by the seeded users, opens K
`chatclient` ChatClients per user spread over the server processes, subscribes every client to every
conversation, and lets every client send chat messages and agent prompts at a modest rate for D
seconds. Meanwhile a fault loop, in an order drawn from `random.Random(seed)`, forces client
disconnects, SIGKILLs a server process, SIGKILLs the agent worker while a run is in progress and
crashes and restarts the private Redis (SIGKILL, then an empty Redis on the same port). The machine's
shared Redis and PostgreSQL are never stopped, flushed or restarted. Afterwards it waits (bounded) for
quiescence and checks:

* every client's transcript of every conversation equals the log exactly: (seq, type, data), in order;
* the log's seqs are 1..head with no hole;
* every run has `agent_started` first and exactly one terminal event, last; tools pair up;
* every acknowledged send is in the log at the acknowledged seq with its text, exactly once, and every
  run the server acknowledged (`run_id` in the reply) appears in the log.

Prints the counts, writes a JSON report (tests/benchmarks/results/, or `--json PATH`) and exits 1 on
any violation, 2 if the run could not be carried out. `tests/e2e/test_chaos_e2e.py` runs a shorter
version through `run_chaos`. See tests/benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(ROOT))

from chatclient import Backoff, ChatClient, ConnectionLost  # noqa: E402

from tests.support.faults import RedisServer, refused  # noqa: E402
from tests.support.limits import LOAD_TEST_ENV  # noqa: E402
from tests.support.servers import Stack, running_stack  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PASSWORD = "demo-password"
USERS = ("alice", "bob", "carol", "admin")  # seeded by seed_demo
TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")
RUN_EVENTS = ("agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_delta", *TERMINAL)

# Slow enough runs that a worker kill lands mid-run, and lost runs reaped within seconds.
STACK_ENV = {
    "AGENT_OFFLINE_TOKEN_DELAY_MS": "50",
    "AGENT_LOST_AFTER_S": "6",
    "AGENT_HEARTBEAT_S": "1",
    **LOAD_TEST_ENV,
}
SEND_TIMEOUT_S = 45.0  # one acknowledged send, retries included
RECOVERY_TIMEOUT_S = 30.0  # a killed process back and ready / Redis answering again
POLL_S = 0.1


@dataclass(frozen=True)
class ChaosConfig:
    seed: int
    duration_s: float = 60.0
    conversations: int = 3
    users: int = 4
    clients_per_user: int = 2
    processes: int = 2
    client_disconnects: int = 50
    server_kills: int = 2
    worker_kills: int = 1
    redis_restarts: int = 1
    # Mean pause between two sends of one client. Every message in an agent conversation starts a run
    # (~1.3 s at 50 ms/word) and a conversation runs one at a time: keep the total below what they drain.
    send_interval_s: float = 5.0
    prompt_share: float = 0.3  # share of sends that are explicit prompts (calculator, the long answer)
    quiesce_timeout_s: float = 120.0
    # Cut sockets even while they are still resubscribing after a reconnect (the harshest timing; it
    # found a client hang, fixed in chatclient). --only-cut-live restricts cuts to settled clients.
    cut_mid_resubscribe: bool = True
    sabotage: bool = False  # hidden: drop one event from one transcript to prove the checker fails
    quiet: bool = False


@dataclass
class Acked:
    conversation: str
    client_msg_id: str
    text: str
    seq: int
    run_id: str | None
    duplicate: bool


@dataclass
class Report:
    seed: int
    config: dict[str, Any]
    clients: int = 0
    conversations: int = 0
    events_in_log: int = 0
    sends_attempted: int = 0
    sends_acked: int = 0
    sends_unacked: int = 0
    send_errors: dict[str, int] = field(default_factory=dict)
    forced_disconnects: int = 0
    server_kills: int = 0
    worker_kills: int = 0
    worker_kills_mid_run: int = 0
    redis_restarts: int = 0
    redis_url: str = ""  # the private Redis the stack used (and the faults restarted)
    client_reconnects: int = 0
    replays: dict[str, int] = field(default_factory=dict)
    duplicates_ignored: int = 0
    runs: int = 0
    run_terminals: dict[str, int] = field(default_factory=dict)
    failure_codes: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    runs_without_terminal: int = 0
    transcript_mismatches: int = 0
    quiescent: bool = False
    stack_tracebacks: int = 0
    elapsed_s: float = 0.0
    killed_mid_run: list[str] = field(default_factory=list)  # runs in progress (as clients saw) at a worker kill
    killed_run_ends: dict[str, str] = field(default_factory=dict)  # how each of those runs ended in the log
    stuck_clients: list[dict[str, Any]] = field(default_factory=list)  # filled when quiescence never came
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


class RunWatch:
    """Which runs are in progress, as the clients see them: the worker kill waits for one."""

    def __init__(self) -> None:
        self.started: set[str] = set()
        self.ended: set[str] = set()
        self.changed = asyncio.Event()

    def on_event(self, frame: dict[str, Any]) -> None:
        run_id = (frame.get("data") or {}).get("run_id")
        if not isinstance(run_id, str):
            return
        if frame["type"] == "agent_started":
            self.started.add(run_id)
        elif frame["type"] in TERMINAL:
            self.ended.add(run_id)
        self.changed.set()

    def running(self) -> set[str]:
        return self.started - self.ended


def say(config: ChaosConfig, message: str) -> None:
    if not config.quiet:
        print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- REST helpers ----------------------------------------------------------------------------------
def login(stack: Stack, username: str) -> str:
    response = httpx.post(
        f"{stack.base_url}/api/auth/token/", json={"username": username, "password": PASSWORD}, timeout=30
    )
    response.raise_for_status()
    return str(response.json()["access"])


def create_conversations(stack: Stack, owner: str, members: list[str], count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {owner}"}
    ids: list[str] = []
    for i in range(count):
        created = httpx.post(
            f"{stack.base_url}/api/conversations/", json={"title": f"chaos {i}", "agent": True}, headers=headers
        )
        created.raise_for_status()
        conv = str(created.json()["id"])
        for username in members:
            httpx.post(
                f"{stack.base_url}/api/conversations/{conv}/members/",
                json={"username": username, "role": "member"},
                headers=headers,
            ).raise_for_status()
        ids.append(conv)
    return ids


async def read_log(stack: Stack, token: str, conv: str) -> list[dict[str, Any]]:
    """The whole durable log of one conversation, paged back from the head, oldest first."""
    events: list[dict[str, Any]] = []
    before: int | None = None
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=15) as http:
        for _ in range(10_000):  # bounded: 100 events a page
            params: dict[str, int] = {"limit": 100}
            if before is not None:
                params["before_seq"] = before
            response = await http.get(
                f"/api/conversations/{conv}/events/", params=params, headers={"Authorization": f"Bearer {token}"}
            )
            response.raise_for_status()
            page = response.json()
            events = page["events"] + events
            if not page["has_more"] or not page["events"]:
                return events
            before = int(page["events"][0]["seq"])
    raise RuntimeError("log paging did not end")


# --- processes -------------------------------------------------------------------------------------
async def wait_for(predicate: Any, timeout: float, what: str, poll_s: float = POLL_S) -> None:
    """Poll a condition until it holds; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(poll_s)


async def all_ready(stack: Stack) -> bool:
    async with httpx.AsyncClient(timeout=2) as http:
        for index in range(len(stack.ports)):
            try:
                if (await http.get(stack.http_url(index) + "/readyz")).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
    return True


@contextlib.contextmanager
def chaos_stack(processes: int) -> Iterator[tuple[Stack, RedisServer]]:
    """A private redis-server on a free port, and the stack (server processes, agent worker, migrate and
    seed) pointed at it. The Redis fault kills and restarts that process: the machine's Redis is shared
    with everyone's tests, so a fault test must never stop or restart it."""
    with (
        RedisServer() as redis,
        running_stack(processes=processes, env_overrides={**STACK_ENV, "REDIS_URL": redis.url}) as stack,
    ):
        yield stack, redis


def restart_redis(redis: RedisServer) -> float:
    """Crash the private Redis (SIGKILL: connections reset, nothing saved) and start it empty on the same
    port, answering PING. Returns the downtime."""
    started = time.monotonic()
    redis.kill()
    if not refused(redis.port):  # the fault must be real: nothing may still answer on the port
        raise RuntimeError(f"port {redis.port} still accepts connections after the private Redis was killed")
    redis.start(timeout=RECOVERY_TIMEOUT_S)
    return time.monotonic() - started


# --- traffic ---------------------------------------------------------------------------------------
class Traffic:
    def __init__(self, config: ChaosConfig, clients: list[ChatClient], conversations: list[str]) -> None:
        self.config = config
        self.clients = clients
        self.conversations = conversations
        self.acked: list[Acked] = []
        self.attempted = 0
        self.unacked = 0
        self.errors: Counter[str] = Counter()
        self.stop = asyncio.Event()

    async def send(self, client: ChatClient, conv: str, text: str) -> Acked | None:
        """One message until acknowledged: the client resends on reconnect; `unavailable` (a dependency
        down, e.g. Redis restarting) is retried here with the same client_msg_id, so at most one message."""
        self.attempted += 1
        key = uuid.uuid4().hex
        deadline = time.monotonic() + SEND_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                reply = await asyncio.wait_for(
                    client.send(conv, text, client_msg_id=key), timeout=max(0.1, deadline - time.monotonic())
                )
            except (TimeoutError, ConnectionLost):
                break
            if reply.get("ok"):
                acked = Acked(
                    conv, key, text, int(reply["message"]["seq"]), reply.get("run_id"), bool(reply.get("duplicate"))
                )
                self.acked.append(acked)
                return acked
            error = reply.get("error") or {}
            self.errors[str(error.get("code"))] += 1
            if error.get("code") not in ("unavailable", "rate_limited", "internal"):
                break
            await asyncio.sleep(min(2.0, float(error.get("retry_after_ms") or 200) / 1000))
        self.unacked += 1
        return None

    def text(self, rng: random.Random, name: str, n: int) -> str:
        if rng.random() >= self.config.prompt_share:
            return f"{name} says {n}"
        if rng.random() < 0.5:
            return "hello there"  # ~30 words, the long run
        return f"what is {rng.randint(2, 99)} * {rng.randint(2, 99)}?"

    async def sender(self, index: int, rng: random.Random) -> None:
        client = self.clients[index]
        n = 0
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=rng.uniform(0, 2 * self.config.send_interval_s))
            if self.stop.is_set():
                return
            n += 1
            await self.send(client, rng.choice(self.conversations), self.text(rng, f"c{index}", n))


# --- faults ----------------------------------------------------------------------------------------
class Faults:
    def __init__(
        self, config: ChaosConfig, stack: Stack, redis: RedisServer, traffic: Traffic, watch: RunWatch, report: Report
    ) -> None:
        self.config = config
        self.stack = stack
        self.redis = redis
        self.traffic = traffic
        self.watch = watch
        self.report = report

    def plan(self, rng: random.Random) -> list[str]:
        faults = (
            ["disconnect"] * self.config.client_disconnects
            + ["server_kill"] * self.config.server_kills
            + ["worker_kill"] * self.config.worker_kills
            + ["redis_restart"] * self.config.redis_restarts
        )
        rng.shuffle(faults)
        return faults

    async def run(self, rng: random.Random, started: float) -> None:
        faults = self.plan(rng)
        # Spread over the send window, leaving its last 10% fault-free so recovery overlaps traffic too.
        step = 0.9 * self.config.duration_s / max(1, len(faults))
        for number, fault in enumerate(faults):
            pause = started + number * step - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)  # the schedule itself, not a wait for a condition
            await getattr(self, fault)(rng)

    async def disconnect(self, rng: random.Random) -> None:
        # By default any connected client, even one still resubscribing after its last reconnect.
        def cuttable(c: ChatClient) -> bool:
            return c._ws is not None and (self.config.cut_mid_resubscribe or not c.stale)

        async def any_cuttable() -> bool:
            return any(cuttable(c) for c in self.traffic.clients)

        await wait_for(any_cuttable, RECOVERY_TIMEOUT_S, "a connected client")
        client = rng.choice([c for c in self.traffic.clients if cuttable(c)])
        # Abort, not close: an abrupt drop without a close handshake, like a lost network.
        if client.drop():
            self.report.forced_disconnects += 1

    async def server_kill(self, rng: random.Random) -> None:
        if not self.config.cut_mid_resubscribe:
            await wait_for(self._clients_live, RECOVERY_TIMEOUT_S, "every client resubscribed")
        victims = self.stack.children("uvicorn")
        if not victims:
            raise RuntimeError("no uvicorn process to kill")
        victim = rng.choice(victims)
        say(self.config, f"SIGKILL server process {victim.pid}")
        os.kill(victim.pid, signal.SIGKILL)
        self.report.server_kills += 1
        # `serve` restarts it; the next fault waits for that so faults stay separate, countable events.
        await wait_for(lambda: self._restarted(victim.pid, "uvicorn"), RECOVERY_TIMEOUT_S, "server process back")
        await wait_for(lambda: all_ready(self.stack), RECOVERY_TIMEOUT_S, "servers ready")

    async def _clients_live(self) -> bool:
        return all(not c.stale for c in self.traffic.clients)

    async def _restarted(self, dead_pid: int, marker: str) -> bool:
        live = [p.pid for p in self.stack.children(marker)]
        return dead_pid not in live and len(live) >= (len(self.stack.ports) if marker == "uvicorn" else 1)

    async def worker_kill(self, rng: random.Random) -> None:
        if not self.watch.running():
            # No run in progress: start a long one and wait until it runs (it may queue behind others).
            conv = rng.choice(self.traffic.conversations)
            acked = await self.traffic.send(rng.choice(self.traffic.clients), conv, "hello there")
            run_id = acked.run_id if acked else None

            async def running() -> bool:
                return bool(self.watch.running()) and (run_id is None or run_id in self.watch.started)

            with contextlib.suppress(TimeoutError):
                await wait_for(running, 30, "a run in progress")
        workers = self.stack.children("runworker")
        if not workers:
            raise RuntimeError("no agent worker to kill")
        mid_run = bool(self.watch.running())
        self.report.killed_mid_run.extend(sorted(self.watch.running()))
        say(self.config, f"SIGKILL agent worker {workers[0].pid} (runs in progress: {len(self.watch.running())})")
        os.kill(workers[0].pid, signal.SIGKILL)
        self.report.worker_kills += 1
        self.report.worker_kills_mid_run += int(mid_run)
        await wait_for(lambda: self._restarted(workers[0].pid, "runworker"), RECOVERY_TIMEOUT_S, "worker back")

    async def redis_restart(self, rng: random.Random) -> None:
        say(self.config, f"SIGKILL and restart the private Redis on port {self.redis.port}")
        downtime = await asyncio.to_thread(restart_redis, self.redis)
        self.report.redis_restarts += 1
        say(self.config, f"Redis back after {downtime:.1f}s")


# --- the check -------------------------------------------------------------------------------------
def canonical(event: dict[str, Any]) -> tuple[int, str, Any]:
    # jsonb reorders keys: compare parsed values, not strings (dict equality ignores key order).
    return (int(event["seq"]), str(event["type"]), event.get("data"))


def check(
    report: Report,
    logs: dict[str, list[dict[str, Any]]],
    clients: list[ChatClient],
    acked: list[Acked],
    sabotage: bool,
) -> None:
    violations = report.violations
    report.events_in_log = sum(len(events) for events in logs.values())
    for conv, events in logs.items():
        seqs = [int(e["seq"]) for e in events]
        if seqs != list(range(1, len(seqs) + 1)):
            violations.append(f"log of {conv} is not 1..{len(seqs)}: holes or repeats")

    # 1. Transcripts equal the log.
    transcripts = {(i, conv): [canonical(e) for e in client.events(conv)] for i, client in enumerate(clients)
                   for conv in logs}  # fmt: skip
    if sabotage:
        key = next(k for k, t in transcripts.items() if len(t) > 2)
        dropped = transcripts[key].pop(len(transcripts[key]) // 2)
        print(f"sabotage: dropped seq {dropped[0]} from client {key[0]}'s copy of {key[1]}", file=sys.stderr)
    for (index, conv), transcript in transcripts.items():
        expected = [canonical(e) for e in logs[conv]]
        if transcript == expected:
            continue
        report.transcript_mismatches += 1
        got_seqs = [t[0] for t in transcript]
        missing = sorted(set(range(1, len(expected) + 1)) - set(got_seqs))
        repeats = [s for s, n in Counter(got_seqs).items() if n > 1]
        report.lost += len(missing)
        report.duplicated += len(repeats)
        first = next((k for k, (a, b) in enumerate(zip(transcript, expected, strict=False)) if a != b), None)
        violations.append(
            f"client {index} transcript of {conv} differs from the log: {len(transcript)} vs {len(expected)} events,"
            f" missing seqs {missing[:10]}, repeated seqs {repeats[:10]}, first difference at index {first}"
        )

    # 2. Runs: agent_started first, exactly one terminal, last; each tool_executing before its tool_completed.
    runs: dict[str, list[dict[str, Any]]] = {}
    for events in logs.values():
        for event in events:
            if event["type"] in RUN_EVENTS:
                runs.setdefault(str(event["data"]["run_id"]), []).append(event)
    report.runs = len(runs)
    terminals: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    for run_id, events in runs.items():
        types = [e["type"] for e in events]
        ends = [e for e in events if e["type"] in TERMINAL]
        for end in ends:
            terminals[end["type"]] += 1
            if end["type"] == "agent_failed":
                codes[str(end["data"].get("error", {}).get("code"))] += 1
        if not ends:
            report.runs_without_terminal += 1
            violations.append(f"run {run_id} has no terminal event: {types}")
        elif len(ends) > 1:
            report.duplicated += len(ends) - 1
            violations.append(f"run {run_id} has {len(ends)} terminal events: {types}")
        elif types[-1] not in TERMINAL:
            violations.append(f"run {run_id}: terminal event is not last: {types}")
        if types[0] != "agent_started" or types.count("agent_started") != 1:
            violations.append(f"run {run_id}: agent_started is not first exactly once: {types}")
        opened: set[str] = set()
        for event in events:
            call = str(event["data"].get("call_id"))
            if event["type"] == "tool_executing":
                opened.add(call)
            elif event["type"] == "tool_completed" and call not in opened:
                violations.append(f"run {run_id}: tool_completed {call} without tool_executing before it")
    for run_id in report.killed_mid_run:
        ends = [e for e in runs.get(run_id, []) if e["type"] in TERMINAL]
        report.killed_run_ends[run_id] = ends[-1]["type"] if ends else "none"
    report.run_terminals = dict(terminals)
    report.failure_codes = dict(codes)

    # 3. Every acknowledged send: in the log at its seq with its text, exactly once; its run exists.
    by_key: Counter[tuple[str, str]] = Counter(
        (conv, str(e["data"].get("client_msg_id")))
        for conv, events in logs.items()
        for e in events
        if e["type"] == "message"
    )
    for sent in acked:
        events = logs[sent.conversation]
        at = events[sent.seq - 1] if 0 < sent.seq <= len(events) else None
        if at is None or at["type"] != "message" or at["data"].get("client_msg_id") != sent.client_msg_id:
            report.lost += 1
            violations.append(f"acked send {sent.client_msg_id} (seq {sent.seq}) is not at its seq in the log")
        elif at["data"].get("text") != sent.text:
            violations.append(f"acked send {sent.client_msg_id} has text {at['data'].get('text')!r} in the log")
        count = by_key[(sent.conversation, sent.client_msg_id)]
        if count > 1:
            report.duplicated += count - 1
            violations.append(f"acked send {sent.client_msg_id} is {count} times in the log")
        if sent.run_id and sent.run_id not in runs:
            report.lost += 1
            violations.append(f"run {sent.run_id} of acked send {sent.client_msg_id} never appeared in the log")


# --- the whole run ---------------------------------------------------------------------------------
async def quiesce(
    stack: Stack, token: str, clients: list[ChatClient], conversations: list[str], acked: list[Acked], timeout: float
) -> tuple[dict[str, list[dict[str, Any]]], bool]:
    """Poll until no run is queued or running (every run in the log and every acknowledged run has a
    terminal event) and every client is connected and at the head of every conversation. Returns the last
    logs read and whether that happened in time (if not, the check still reports what is missing)."""
    logs: dict[str, list[dict[str, Any]]] = {}
    acked_runs = {a.run_id for a in acked if a.run_id}

    async def settled() -> bool:
        nonlocal logs
        try:
            logs = {conv: await read_log(stack, token, conv) for conv in conversations}
        except httpx.HTTPError:
            return False
        started, ended = set(), set()
        for events in logs.values():
            for e in events:
                if e["type"] == "agent_started":
                    started.add(e["data"]["run_id"])
                elif e["type"] in TERMINAL:
                    ended.add(e["data"]["run_id"])
        if started - ended or acked_runs - ended:
            return False
        return all(
            not client.stale and client.streams[conv].last_seq == (logs[conv][-1]["seq"] if logs[conv] else 0)
            for client in clients
            for conv in conversations
        )

    try:
        await wait_for(settled, timeout, "quiescence", poll_s=0.5)  # each poll reads every log
    except TimeoutError:
        if not logs:
            logs = {conv: await read_log(stack, token, conv) for conv in conversations}
        return logs, False
    return logs, True


async def describe_clients(clients: list[ChatClient], logs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Evidence for a client that never caught up: its connection state and whether its socket still answers."""
    described = []
    for index, client in enumerate(clients):
        behind = {
            conv: (client.streams[conv].last_seq, events[-1]["seq"] if events else 0)
            for conv, events in logs.items()
            if client.streams[conv].last_seq != (events[-1]["seq"] if events else 0)
        }
        if not behind and not client.stale:
            continue
        ping: str
        try:
            ping = str((await asyncio.wait_for(client.command("ping"), timeout=5)).get("ok"))
        except (TimeoutError, ConnectionLost) as exc:
            ping = f"no answer ({type(exc).__name__})"
        task = client._task
        described.append(
            {
                "client": index,
                "url": client.url,
                "stale": client.stale,
                "connects": client.connects,
                "pending_commands": len(client._pending),
                "task_done": task.done() if task else None,
                "ping": ping,
                "behind (last_seq, head)": behind,
                "last_frames": client.frames[-3:],
            }
        )
    return described


async def run_chaos(config: ChaosConfig, stack: Stack, redis: RedisServer) -> Report:
    """`stack` must use `redis` (see `chaos_stack`): the Redis faults restart that server, and only that one."""
    if stack.env.get("REDIS_URL") != redis.url:
        raise ValueError(f"the stack uses {stack.env.get('REDIS_URL')}, not the private Redis {redis.url}")
    report = Report(seed=config.seed, config=asdict(config), redis_url=redis.url)
    rng = random.Random(config.seed)
    began = time.monotonic()
    users = list(USERS[: config.users])
    tokens = {u: await asyncio.to_thread(login, stack, u) for u in users}
    conversations = await asyncio.to_thread(
        create_conversations, stack, tokens[users[0]], users[1:], config.conversations
    )
    watch = RunWatch()
    clients: list[ChatClient] = []
    for u_index, user in enumerate(users):
        for c_index in range(config.clients_per_user):
            index = u_index * config.clients_per_user + c_index
            clients.append(
                ChatClient(
                    stack.ws_url(index % len(stack.ports)),
                    token=tokens[user],
                    backoff=Backoff(base_s=0.2, cap_s=2.0, rng=random.Random(config.seed * 1000 + index).random),
                    # Only one client per conversation needs to feed the run watch; all do, it is idempotent.
                    on_event=watch.on_event,
                )
            )
    report.clients, report.conversations = len(clients), len(conversations)
    traffic = Traffic(config, clients, conversations)
    senders: list[asyncio.Task[None]] = []
    try:
        for client in clients:
            await client.start()
            for conv in conversations:
                reply = await client.subscribe(conv, since_seq=0)  # since 0: the whole log, from seq 1
                if not reply.get("ok"):
                    raise RuntimeError(f"subscribe failed: {reply}")
        say(config, f"seed {config.seed}: {len(clients)} clients, {len(conversations)} conversations, "
                    f"{config.duration_s:.0f}s of traffic and faults")  # fmt: skip
        started = time.monotonic()
        senders = [
            asyncio.create_task(traffic.sender(i, random.Random(config.seed * 7919 + i))) for i in range(len(clients))
        ]
        faults = Faults(config, stack, redis, traffic, watch, report)
        await faults.run(rng, started)
        remaining = started + config.duration_s - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)  # the rest of the traffic window, by design
        traffic.stop.set()
        # Senders end after their in-flight send is acknowledged or gives up (SEND_TIMEOUT_S).
        await asyncio.wait_for(asyncio.gather(*senders), timeout=SEND_TIMEOUT_S + 10)
        say(config, f"traffic stopped: {len(traffic.acked)} acknowledged sends; waiting for quiescence")
        logs, report.quiescent = await quiesce(
            stack, tokens[users[0]], clients, conversations, traffic.acked, config.quiesce_timeout_s
        )
        if not report.quiescent:
            report.stuck_clients = await describe_clients(clients, logs)
            report.violations.append(f"no quiescence within {config.quiesce_timeout_s:.0f}s (runs pending or"
                                     " clients behind or disconnected)")  # fmt: skip
        check(report, logs, clients, traffic.acked, config.sabotage)
    finally:
        traffic.stop.set()
        for task in senders:
            task.cancel()
        for client in clients:
            await client.close()
    report.sends_attempted, report.sends_acked, report.sends_unacked = (
        traffic.attempted, len(traffic.acked), traffic.unacked,
    )  # fmt: skip
    report.send_errors = dict(traffic.errors)
    report.client_reconnects = sum(max(0, c.connects - 1) for c in clients)
    report.replays = dict(sum((Counter(c.replays) for c in clients), Counter()))
    report.duplicates_ignored = sum(c.duplicates_ignored for c in clients)
    report.stack_tracebacks = stack.log().count("Traceback")
    report.elapsed_s = round(time.monotonic() - began, 1)
    return report


def print_report(report: Report) -> None:
    rows = [
        ("seed", report.seed),
        ("clients", report.clients),
        ("conversations", report.conversations),
        ("events in log", report.events_in_log),
        ("sends acked / attempted", f"{report.sends_acked} / {report.sends_attempted}"),
        ("send errors (retried)", report.send_errors),
        ("forced disconnects", report.forced_disconnects),
        ("server kills", report.server_kills),
        ("worker kills (mid-run)", f"{report.worker_kills} ({report.worker_kills_mid_run})"),
        ("Redis restarts", f"{report.redis_restarts} (private, {report.redis_url})"),
        ("client reconnects", report.client_reconnects),
        ("replays by outcome", report.replays),
        ("duplicates ignored by clients", report.duplicates_ignored),
        ("runs", report.runs),
        ("run terminals", report.run_terminals),
        ("agent_failed codes", report.failure_codes),
        ("runs killed mid-run -> end", report.killed_run_ends),
        ("lost", report.lost),
        ("duplicated", report.duplicated),
        ("runs without terminal", report.runs_without_terminal),
        ("transcript mismatches", report.transcript_mismatches),
        ("quiescent", report.quiescent),
        ("tracebacks in stack log", report.stack_tracebacks),
        ("elapsed s", report.elapsed_s),
    ]
    for name, value in rows:
        print(f"{name:32} {value}")
    for stuck in report.stuck_clients:
        print(f"stuck client: {stuck}")
    for violation in report.violations:
        print(f"VIOLATION: {violation}")
    print("OK" if report.ok else f"FAILED: {len(report.violations)} violation(s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=None, help="fault order and traffic (default: random)")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--conversations", type=int, default=3)
    parser.add_argument("--users", type=int, default=4, choices=range(1, len(USERS) + 1))
    parser.add_argument("--clients-per-user", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--disconnects", type=int, default=50)
    parser.add_argument("--server-kills", type=int, default=2)
    parser.add_argument("--worker-kills", type=int, default=1)
    parser.add_argument("--redis-restarts", type=int, default=1)
    parser.add_argument("--send-interval", type=float, default=5.0, help="mean seconds between sends per client")
    parser.add_argument("--quiesce-timeout", type=float, default=120.0)
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--only-cut-live", action="store_true", help="cut only clients that finished resubscribing (gentler timing)"
    )
    parser.add_argument("--sabotage", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    print(f"seed {seed}", flush=True)
    config = ChaosConfig(
        seed=seed,
        duration_s=args.duration,
        conversations=args.conversations,
        users=args.users,
        clients_per_user=args.clients_per_user,
        processes=args.processes,
        client_disconnects=args.disconnects,
        server_kills=args.server_kills,
        worker_kills=args.worker_kills,
        redis_restarts=args.redis_restarts,
        send_interval_s=args.send_interval,
        quiesce_timeout_s=args.quiesce_timeout,
        cut_mid_resubscribe=not args.only_cut_live,
        sabotage=args.sabotage,
        quiet=args.quiet,
    )
    try:
        with chaos_stack(config.processes) as (stack, redis):
            try:
                report = asyncio.run(run_chaos(config, stack, redis))
            finally:
                log_copy = RESULTS_DIR / f"chaos-{seed}-{time.strftime('%Y%m%d-%H%M%S')}-stack.log"
                RESULTS_DIR.mkdir(parents=True, exist_ok=True)
                log_copy.write_text(stack.log())
    except Exception as exc:  # noqa: BLE001 - any setup failure means "could not be carried out"
        print(f"chaos run could not be carried out: {exc!r}", file=sys.stderr)
        return 2
    print_report(report)
    path = (
        Path(args.json_path) if args.json_path else RESULTS_DIR / f"chaos-{seed}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    print(f"report: {path}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
