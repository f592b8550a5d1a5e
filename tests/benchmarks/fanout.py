"""Fan-out benchmark: N sockets in one conversation, S of them sending at a fixed total rate.

Starts the real stack (`manage.py serve` on a fresh PostgreSQL database, see tests/support/servers.py),
creates N users and one agent-less conversation with all of them as members, opens N authenticated
`chat.v1` sockets (round-robin over the server processes), subscribes every socket, then lets S sender
sockets send `send` commands at R msgs/s in total for D seconds on an absolute schedule. Every socket
records every durable event it receives; latency is receive time minus the send time carried in the
message text (same machine, same clock). Reports loss, duplicates, order, latency percentiles and the
CPU of the server process tree and of the clients. Exit status 1 if anything was lost, duplicated or
reordered, 2 if the run could not be carried out. See tests/benchmarks/README.md.

The clients run in their own processes (`--client-procs`, default 2), so a client backlog does not
add to the measured latency, and their CPU is measured so a reader can tell whether the client, not
the server, was the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import re
import sys
import time
import uuid
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(ROOT))

from tests.support.limits import LOAD_TEST_ENV  # noqa: E402
from tests.support.servers import Stack, running_stack  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PASSWORD = "bench-password-1"
ADMIN_PASSWORD = "demo-password"  # seed_demo's; used only to read the staff-only /metrics

# Bounds for every wait, so a broken server makes the benchmark fail instead of hang.
CONNECT_TIMEOUT_S = 20.0
SETUP_TIMEOUT_S = 180.0
CLOSE_TIMEOUT_S = 5.0
POLL_S = 0.02
MAX_FRAMES_PER_SETUP = 10_000

# Server counters worth showing next to the client's view (monitoring/metrics.py, chat/realtime/*).
INTERESTING_COUNTERS = (
    "hub_events",
    "gap_fills",
    "replays",
    "hub_gap_reads",
    "hub_resyncs",
    "buffer_errors",
    "duplicate_events_dropped",
    "slow_consumer_closes",
    "doorbell_failures",
    "hub_receive_errors",
    "command_errors",
    "disconnects",
)


def log(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"[fanout {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- configuration and what travels between processes ---------------------------------------------
@dataclass(frozen=True)
class Options:
    sockets: int
    rate: float
    duration: float
    senders: int
    processes: int
    server: str
    client_procs: int
    drain_timeout: float
    connect_concurrency: int
    login_via_api: bool
    server_env: dict[str, str]
    wait_quiet: float
    json_path: str | None
    quiet: bool


@dataclass(frozen=True)
class SocketSpec:
    index: int
    username: str
    token: str
    url: str
    sender: int | None  # sender number 0..S-1, or None for a receive-only socket


@dataclass(frozen=True)
class WorkerSpec:
    worker: int
    conversation: str
    sockets: list[SocketSpec]
    rate: float
    total_messages: int
    senders: int
    run_tag: str
    connect_concurrency: int


@dataclass
class SocketResult:
    index: int
    received: int = 0  # durable events of the conversation, duplicates included
    unique: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    gaps: int = 0
    missing: int = 0  # expected (acked) seqs never received
    unexpected: int = 0  # received seqs that no sender saw acknowledged
    close_code: int | None = None
    closed_at_ns: int = 0  # when the connection went away before the benchmark closed it (0: it did not)
    last_recv_ns: int = 0
    last_seq: int = 0
    missing_sample: list[int] = field(default_factory=list)
    latencies_us: bytes = b""  # array('q') of microseconds, only for bench messages


@dataclass
class SenderResult:
    sender: int
    sent: int = 0
    acked: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    max_lag_ms: float = 0.0  # how far behind its schedule a send went out (client-side pacing)
    last_sent_ns: int = 0
    ack_rtt_us: bytes = b""
    acked_seqs: list[int] = field(default_factory=list)


# --- the client side (runs inside worker processes) ---------------------------------------------------
# The start of a bench message's text inside a server-encoded `message` event (compact JSON).
BENCH_TEXT = b'"text":"bench '


class BenchSocket(asyncio.Protocol):
    """One socket as an asyncio Protocol around websockets' sans-I/O client: bytes in, frames out, all
    inside `data_received`, with no task, future or queue per frame (a stream-style client pays for
    those on every frame, and the client shares the machine's two cores with the server). One
    timestamp per TCP read: frames that arrived together share it."""

    def __init__(self, spec: SocketSpec, conversation: str) -> None:
        self.spec = spec
        self.conversation = conversation
        uri = parse_uri(spec.url)
        self.host, self.port = uri.host, uri.port
        # No extensions offered: plain JSON text frames, as a client offering only chat.v1 gets.
        self.ws = ClientProtocol(uri, subprotocols=[Subprotocol("chat.v1")], max_size=2**20)
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.welcomed: asyncio.Future[None] = loop.create_future()
        self.subscribed: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.fragments: list[bytes] = []
        self.message_prefix = b'{"type":"message","conversation":"' + conversation.encode() + b'","seq":'
        self.head_seq = 0
        self.last_seq = 0
        self.seen: set[int] = set()
        self.result = SocketResult(spec.index)
        self.latencies = array("q")
        self.closed = False
        # Sender bookkeeping: command id -> send time (ns); filled by the sender, emptied on the reply.
        self.pending: dict[str, int] = {}
        self.sender_result = SenderResult(spec.sender if spec.sender is not None else -1)
        self.ack_rtt = array("q")
        self.all_acked = asyncio.Event()
        self.sending_done = False

    # --- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        request = self.ws.connect()
        request.headers["Authorization"] = f"Bearer {self.spec.token}"
        self.ws.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()  # first thing: the latency clock stops here
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT or event.opcode is Opcode.CONT:
                    self._text_frame(event, now)
            elif isinstance(event, Response) and self.ws.state is not State.OPEN:
                self._fail_setup(RuntimeError(f"handshake refused: {event.status_code} {self.ws.handshake_exc}"))
        self._flush()  # pongs and the closing handshake, which the sans-I/O protocol queues itself

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ws.receive_eof()  # moves the sans-I/O state to CLOSED, which is when close_code is known
        self.result.close_code = self.ws.close_code
        self.result.closed_at_ns = time.time_ns()
        self._fail_setup(ConnectionError(f"socket {self.spec.index} closed (code {self.ws.close_code})"))
        if not self.lost.done():
            self.lost.set_result(None)
        self.all_acked.set()  # nothing more will arrive: release a waiting sender

    def _flush(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for data in self.ws.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
        if self.ws.close_expected():
            self.transport.close()

    def _fail_setup(self, exc: Exception) -> None:
        for future in (self.welcomed, self.subscribed):
            if not future.done():
                future.set_exception(exc)

    # --- frames ------------------------------------------------------------------------------------------
    def _text_frame(self, event: Frame, now: int) -> None:
        if not event.fin:  # the server does not fragment, but a correct client reassembles
            self.fragments.append(bytes(event.data))
            return
        data = bytes(event.data)
        if self.fragments:
            data, self.fragments = b"".join([*self.fragments, data]), []
        fast = self._fast_message(data)
        if fast is not None:
            self._event(fast[0], fast[1], now)
            return
        frame = json.loads(data)  # the only parse of this frame
        if "seq" in frame:
            if frame.get("conversation") == self.conversation:
                text = frame.get("data", {}).get("text", "")
                parts = text.split(" ") if text.startswith("bench ") else []
                sent_ns = int(parts[3]) if len(parts) == 4 and parts[3].isdigit() else None
                self._event(int(frame["seq"]), sent_ns, now)
        elif frame.get("type") == "reply":
            if frame.get("id") == "sub":
                self._subscribe_reply(frame)
            else:
                self._reply(frame, now)
        elif frame.get("type") == "welcome" and not self.welcomed.done():
            self.welcomed.set_result(None)

    def _subscribe_reply(self, frame: dict[str, Any]) -> None:
        if self.subscribed.done():
            return
        if frame.get("ok"):
            self.head_seq = self.last_seq = int(frame["head_seq"])
            self.subscribed.set_result(None)
        else:
            self.subscribed.set_exception(RuntimeError(f"socket {self.spec.index}: subscribe refused: {frame!r:.300}"))

    def _fast_message(self, data: bytes) -> tuple[int, int | None] | None:
        """(seq, send time) of a `message` event of our conversation, read without a JSON parse, which is
        most of a frame's client cost. None for any other frame, or one not in the server's compact
        encoding: json.loads then decides, so an encoding change costs speed, never correctness."""
        prefix = self.message_prefix
        if not data.startswith(prefix):
            return None
        end = data.find(b",", len(prefix))
        digits = data[len(prefix) : end]
        if not digits.isdigit():
            return None
        start = data.find(BENCH_TEXT, end)
        if start < 0:
            return int(digits), None
        start += len(BENCH_TEXT)
        parts = data[start : data.find(b'"', start)].split(b" ")
        sent = parts[2] if len(parts) == 3 else b""
        return int(digits), int(sent) if sent.isdigit() else None

    def _event(self, seq: int, sent_ns: int | None, now: int) -> None:
        result = self.result
        result.received += 1
        result.last_recv_ns = now
        if seq in self.seen:
            result.duplicates += 1
            return
        self.seen.add(seq)
        if seq < self.last_seq:
            result.out_of_order += 1
        else:
            if seq > self.last_seq + 1:
                result.gaps += 1
            self.last_seq = seq
        if sent_ns is not None:
            self.latencies.append((now - sent_ns) // 1000)

    def _reply(self, frame: dict[str, Any], now: int) -> None:
        sent_at = self.pending.pop(str(frame.get("id")), None)
        if sent_at is None:
            return
        sender = self.sender_result
        if frame.get("ok"):
            sender.acked += 1
            sender.acked_seqs.append(int(frame["message"]["seq"]))
            self.ack_rtt.append((now - sent_at) // 1000)
        else:
            code = str(frame.get("error", {}).get("code"))
            sender.errors[code] = sender.errors.get(code, 0) + 1
        if self.sending_done and not self.pending:
            self.all_acked.set()

    def send_json(self, message: dict[str, Any]) -> None:
        self.ws.send_text(json.dumps(message).encode())
        self._flush()

    # --- lifecycle -----------------------------------------------------------------------------------
    async def open(self, semaphore: asyncio.Semaphore) -> None:
        """Connect, wait for `welcome`, subscribe and wait for the reply (presence frames are ignored)."""
        async with semaphore:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.create_connection(lambda: self, self.host, self.port), CONNECT_TIMEOUT_S)
            await asyncio.wait_for(asyncio.shield(self.welcomed), CONNECT_TIMEOUT_S)
            self.send_json({"type": "subscribe", "id": "sub", "conversation": self.conversation})
            await asyncio.wait_for(asyncio.shield(self.subscribed), CONNECT_TIMEOUT_S)

    async def send_schedule(
        self, t0: float, rate: float, total: int, senders: int, run_tag: str, deadline: float
    ) -> None:
        """Send global messages k = sender, sender+S, ... at t0 + k/rate. The schedule is absolute, so a
        late send does not push every later one back (no sleep-after-send drift)."""
        assert self.spec.sender is not None
        me = self.spec.sender
        sender = self.sender_result
        for k in range(me, total, senders):
            if self.closed:
                break
            delay = t0 + k / rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                sender.max_lag_ms = max(sender.max_lag_ms, -delay * 1000)
            sent_ns = time.time_ns()
            command_id = f"s{k}"
            self.pending[command_id] = sent_ns
            self.send_json(
                {
                    "type": "send",
                    "id": command_id,
                    "conversation": self.conversation,
                    "client_msg_id": f"{run_tag}-{k}",
                    "text": f"bench {me} {k} {sent_ns}",
                }
            )
            sender.sent += 1
            sender.last_sent_ns = sent_ns
        self.sending_done = True
        if not self.pending:
            self.all_acked.set()
        with contextlib.suppress(TimeoutError):  # replies may lag far behind under overload; bounded
            await asyncio.wait_for(self.all_acked.wait(), max(0.0, deadline - time.time()))
        if self.pending:
            sender.errors["no_reply"] = len(self.pending)

    def finish(self, expected: set[int]) -> SocketResult:
        result = self.result
        result.unique = len(self.seen)
        result.missing = len(expected - self.seen)
        result.unexpected = len(self.seen - expected)
        result.last_seq = self.last_seq
        result.missing_sample = sorted(expected - self.seen)[:10]
        result.latencies_us = self.latencies.tobytes()
        return result

    async def close(self) -> None:
        if self.transport is None or self.closed:
            return
        with contextlib.suppress(Exception):
            self.ws.send_close(1000)
            self._flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.lost), CLOSE_TIMEOUT_S)
        self.transport.abort()  # bounded: whatever the server did, the socket is gone now


def _poll_recv(conn: multiprocessing.connection.Connection, timeout: float) -> Any:
    return conn.recv() if conn.poll(timeout) else None


async def _from_main(conn: multiprocessing.connection.Connection, expect: str, timeout: float) -> tuple[Any, ...]:
    # Blocking pipe read in a thread, so the sockets' readers keep running meanwhile.
    message = await asyncio.to_thread(_poll_recv, conn, timeout)
    if not message or message[0] != expect:
        raise RuntimeError(f"worker expected {expect!r} from the main process, got {message!r:.200}")
    return tuple(message)


async def _worker(conn: multiprocessing.connection.Connection, spec: WorkerSpec) -> None:
    sockets = [BenchSocket(s, spec.conversation) for s in spec.sockets]
    semaphore = asyncio.Semaphore(spec.connect_concurrency)
    try:
        await asyncio.wait_for(asyncio.gather(*(s.open(semaphore) for s in sockets)), SETUP_TIMEOUT_S)
        conn.send(("ready", {"sockets": len(sockets), "head_seqs": sorted({s.head_seq for s in sockets})}))
        # One deadline for the whole tail after sending: the last reply and the last delivery.
        _, t0, deadline = await _from_main(conn, "go", SETUP_TIMEOUT_S)
        senders = [s for s in sockets if s.spec.sender is not None]
        await asyncio.wait_for(
            asyncio.gather(
                *(
                    s.send_schedule(t0, spec.rate, spec.total_messages, spec.senders, spec.run_tag, deadline)
                    for s in senders
                )
            ),
            deadline - time.time() + 10,
        )
        sender_results = []
        for s in senders:
            s.sender_result.ack_rtt_us = s.ack_rtt.tobytes()
            sender_results.append(s.sender_result)
        conn.send(("sent", sender_results))
        _, expected_list = await _from_main(conn, "expect", SETUP_TIMEOUT_S)
        expected = set(expected_list)
        # Bounded wait: until every open socket holds every acked seq, or the deadline.
        while time.time() < deadline:
            if all(s.closed or len(s.seen) >= len(expected) and expected <= s.seen for s in sockets):
                break
            await asyncio.sleep(POLL_S)
        conn.send(("result", [s.finish(expected) for s in sockets]))
    except Exception as exc:  # report instead of dying silently: the main process decides
        conn.send(("error", f"worker {spec.worker}: {type(exc).__name__}: {exc}"))
    finally:
        await asyncio.gather(*(s.close() for s in sockets))


def worker_main(conn: multiprocessing.connection.Connection, spec: WorkerSpec) -> None:
    # uvloop (installed with uvicorn[standard]) has a cheaper read path than the default loop, which
    # matters with 100+ sockets that each wake up for one small frame; the default loop works too.
    try:
        import uvloop
    except ImportError:
        asyncio.run(_worker(conn, spec))
    else:
        uvloop.run(_worker(conn, spec))
    conn.close()


# --- setup through the stack --------------------------------------------------------------------------
CREATE_USERS = """
import json
from django.contrib.auth.hashers import make_password
from django.db import transaction
from rest_framework_simplejwt.tokens import RefreshToken
from chat.models import User
from chat.services.conversations import user_create
names = json.loads({names!r})
# One PBKDF2 hash (~0.4 s each here) shared by all users instead of N: same password, same login path.
hashed = make_password({password!r})
User.set_password = lambda self, raw: setattr(self, "password", hashed)
tokens = {{}}
with transaction.atomic():
    for name in names:
        user = user_create(username=name, password={password!r})
        # What POST /api/auth/token/ returns (RefreshToken.for_user(...).access_token), minted here
        # because logging in N users would cost N server-side PBKDF2 checks (~0.4 s of CPU each).
        tokens[name] = str(RefreshToken.for_user(user).access_token)
print("BENCH_TOKENS " + json.dumps(tokens))
"""


def create_users(stack: Stack, names: list[str], *, via_api: bool, quiet: bool) -> dict[str, str]:
    out = stack.manage("shell", "-c", CREATE_USERS.format(names=json.dumps(names), password=PASSWORD))
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_TOKENS ")), None)
    if line is None:
        raise RuntimeError(f"user creation printed no tokens:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    tokens: dict[str, str] = json.loads(line.removeprefix("BENCH_TOKENS "))
    if via_api:
        log(quiet, f"logging in {len(names)} users through POST /api/auth/token/")
        with httpx.Client(base_url=stack.base_url, timeout=30) as http:
            for name in names:
                tokens[name] = token_for(http, name, PASSWORD)
    return tokens


def token_for(http: httpx.Client, username: str, password: str) -> str:
    response = http.post("/api/auth/token/", json={"username": username, "password": password})
    response.raise_for_status()
    return str(response.json()["access"])


def create_conversation(stack: Stack, names: list[str]) -> str:
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        alice = token_for(http, "alice", ADMIN_PASSWORD)
        headers = {"Authorization": f"Bearer {alice}"}
        response = http.post(
            "/api/conversations/", headers=headers, json={"title": f"fanout {len(names)}", "agent": False}
        )
        response.raise_for_status()
        conversation = str(response.json()["id"])
        for name in names:
            added = http.post(
                f"/api/conversations/{conversation}/members/",
                headers=headers,
                json={"username": name, "role": "member"},
            )
            if added.status_code != 201:
                raise RuntimeError(f"adding {name}: {added.status_code} {added.text[:300]}")
    return conversation


def staff_client(stack: Stack) -> httpx.Client | None:
    """A session logged in as the seeded staff user, to read each process's /metrics (best effort)."""
    http = httpx.Client(base_url=stack.base_url, timeout=10)
    try:
        http.get("/login/")
        csrf = http.cookies.get("csrftoken", "")
        http.post("/login/", data={"username": "admin", "password": ADMIN_PASSWORD, "csrfmiddlewaretoken": csrf})
        if "sessionid" in http.cookies:
            return http
    except httpx.HTTPError:
        pass
    http.close()
    return None


def scrape_metrics(stack: Stack, http: httpx.Client | None) -> dict[str, dict[str, Any]]:
    """The server counters from /metrics (Prometheus text, already summed over every process of the
    stack), as {"all": {name: value or {labels: value}}} with the `chat_` prefix and `_total` suffix
    taken off, so the names read like the server's own counter names."""
    if http is None:
        return {}
    with contextlib.suppress(httpx.HTTPError, ValueError):
        response = http.get(stack.http_url(0) + "/metrics")
        if response.status_code == 200:
            return {"all": parse_counters(response.text)}
    return {}


def parse_counters(text: str) -> dict[str, Any]:
    counters: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "counter":
            continue
        name = family.name.removeprefix("chat_")
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            if sample.labels:
                label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                counters.setdefault(name, {})[label] = sample.value
            else:
                counters[name] = sample.value
    return counters


def counters_delta(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Counter increase during the run, summed over server processes; labelled counters stay split."""
    total: dict[str, Any] = {}
    for port, counters in after.items():
        base = before.get(port, {})
        for name, value in counters.items():
            if isinstance(value, dict):
                bucket = total.setdefault(name, {})
                for label, v in value.items():
                    bucket[label] = bucket.get(label, 0) + v - base.get(name, {}).get(label, 0)
            else:
                total[name] = total.get(name, 0) + value - (base.get(name, 0) or 0)
    return total


# --- CPU accounting ----------------------------------------------------------------------------------
def process_label(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return f"pid {proc.pid}"
    joined = " ".join(cmd)
    port = next((cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a in ("--port", "-p")), "?")
    if "manage.py" in joined and "serve" in cmd:  # before the server names: its argv has `--server uvicorn`
        return "serve (supervisor)"
    if "uvicorn" in joined:
        return f"uvicorn :{port}"
    if "daphne" in joined:
        return f"daphne :{port}"
    if "runworker" in joined:
        return "agent worker"
    return f"{proc.name()} {proc.pid}"


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    out: dict[int, float] = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
    return out


def infra_processes() -> list[psutil.Process]:
    """PostgreSQL and Redis server processes (machine-wide: they serve the stack but are not its children)."""
    found = []
    for proc in psutil.process_iter(["name"]):
        name = proc.info.get("name") or ""
        if name.startswith(("postgres", "redis-server")):
            found.append(proc)
    return found


@dataclass
class CpuSnapshot:
    wall: float
    server: dict[int, float]
    clients: dict[int, float]
    infra: dict[int, float]
    machine: Any

    @classmethod
    def take(cls, server: list[psutil.Process], clients: list[psutil.Process]) -> CpuSnapshot:
        return cls(
            time.time(), cpu_seconds(server), cpu_seconds(clients), cpu_seconds(infra_processes()), psutil.cpu_times()
        )


def cpu_report(a: CpuSnapshot, b: CpuSnapshot, labels: dict[int, str]) -> dict[str, Any]:
    wall = max(b.wall - a.wall, 1e-9)

    def pct(seconds: float) -> float:
        return round(100 * seconds / wall, 1)

    per_process = {}
    for pid, label in labels.items():
        if pid in a.server and pid in b.server:
            per_process[f"{label} (pid {pid})"] = pct(b.server[pid] - a.server[pid])
    # Backends that started during the window count from zero; ones that exited are missed (approximate).
    infra = sum(v - a.infra.get(pid, 0.0) for pid, v in b.infra.items())
    client = sum(v - a.clients.get(pid, 0.0) for pid, v in b.clients.items())
    server = sum(b.server[p] - a.server[p] for p in b.server if p in a.server)
    busy_a = sum(a.machine) - a.machine.idle - getattr(a.machine, "iowait", 0.0)
    busy_b = sum(b.machine) - b.machine.idle - getattr(b.machine, "iowait", 0.0)
    busy = busy_b - busy_a
    return {
        "wall_s": round(wall, 2),
        "server_pct": pct(server),
        "server_per_process_pct": per_process,
        "client_pct": pct(client),
        "postgres_redis_pct": pct(infra),
        "machine_busy_pct": pct(busy),
        # Whatever else ran on the machine meanwhile (other jobs, the kernel's network work): a large
        # value means the numbers were taken on a shared, not a quiet, machine.
        "other_pct": pct(max(0.0, busy - server - client - infra)),
        "machine_capacity_pct": 100 * (psutil.cpu_count() or 1),
    }


# --- aggregation and report ------------------------------------------------------------------------------
def machine_busy_pct(seconds: float) -> float:
    """Machine-wide busy CPU over a short sample, in % of one core: taken while the stack is idle, it is
    the load of everything else on the machine, which the numbers below compete with."""
    a = psutil.cpu_times()
    time.sleep(seconds)
    b = psutil.cpu_times()
    busy = (sum(b) - b.idle - getattr(b, "iowait", 0.0)) - (sum(a) - a.idle - getattr(a, "iowait", 0.0))
    return round(100 * busy / seconds, 1)


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[rank])


def aggregate(
    sockets: list[SocketResult], senders: list[SenderResult], expected: set[int], t0: float
) -> dict[str, Any]:
    latencies: list[int] = []
    for s in sockets:
        latencies.extend(array("q", s.latencies_us))
    latencies.sort()
    rtts: list[int] = []
    for sr in senders:
        rtts.extend(array("q", sr.ack_rtt_us))
    rtts.sort()
    errors: Counter[str] = Counter()
    for sr in senders:
        errors.update(sr.errors)
    deliveries = sum(s.received for s in sockets)
    last_ns = max((s.last_recv_ns for s in sockets), default=0)
    last_sent_ns = max((sr.last_sent_ns for sr in senders), default=0)
    delivery_window = max(last_ns / 1e9 - t0, 1e-9) if last_ns else float("nan")
    # Connections that went away before the benchmark closed them (code None: TCP gone without a close frame).
    closes = Counter(str(s.close_code) for s in sockets if s.closed_at_ns)
    incomplete = [
        {
            "socket": s.index,
            "received": s.received,
            "unique": s.unique,
            "missing": s.missing,
            "missing_first": s.missing_sample,
            "last_seq": s.last_seq,
            "close_code": s.close_code,
            "closed_after_start_s": round(s.closed_at_ns / 1e9 - t0, 2) if s.closed_at_ns else None,
        }
        for s in sockets
        if s.missing or s.closed_at_ns
    ]
    return {
        "messages_sent": sum(sr.sent for sr in senders),
        "messages_acked": len(expected),
        "send_errors": dict(errors),
        "expected_deliveries": len(expected) * len(sockets),
        "deliveries": deliveries,
        "unique_deliveries": sum(s.unique for s in sockets),
        "lost": sum(s.missing for s in sockets),
        "duplicates": sum(s.duplicates for s in sockets),
        "out_of_order": sum(s.out_of_order for s in sockets),
        "gaps": sum(s.gaps for s in sockets),
        "unexpected_seqs": sum(s.unexpected for s in sockets),
        "sockets_incomplete": sum(1 for s in sockets if s.missing),
        "sockets_closed_early": dict(closes),
        "incomplete_sockets": incomplete[:50],
        "latency_ms": {
            name: round(percentile(latencies, q) / 1000, 2)
            for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
        },
        "latency_samples": len(latencies),
        "ack_rtt_ms": {
            name: round(percentile(rtts, q) / 1000, 2) for name, q in (("p50", 50), ("p99", 99), ("max", 100))
        },
        "max_send_lag_ms": round(max((sr.max_lag_ms for sr in senders), default=0.0), 2),
        "deliveries_per_s": round(deliveries / delivery_window, 1),
        "drain_after_last_send_s": round((last_ns - last_sent_ns) / 1e9, 3) if last_ns and last_sent_ns else None,
    }


def render(report: dict[str, Any]) -> str:
    c, r = report["config"], report["results"]
    cpu, cpu_all = report["cpu_send_window"], report["cpu_until_drained"]
    lat, rtt = r["latency_ms"], r["ack_rtt_ms"]
    rows = [
        ("server", f"{c['server']} x {c['processes']} process(es)"),
        ("sockets / senders / client procs", f"{c['sockets']} / {c['senders']} / {c['client_procs']}"),
        ("rate x duration", f"{c['rate']:g} msg/s x {c['duration']:g} s"),
        ("messages sent / acked", f"{r['messages_sent']} / {r['messages_acked']}"),
        ("send errors", json.dumps(r["send_errors"]) if r["send_errors"] else "none"),
        ("expected deliveries (acked x N)", f"{r['expected_deliveries']}"),
        ("deliveries (unique)", f"{r['deliveries']} ({r['unique_deliveries']})"),
        ("lost / duplicates / out-of-order", f"{r['lost']} / {r['duplicates']} / {r['out_of_order']}"),
        ("seq gaps seen / unexpected seqs", f"{r['gaps']} / {r['unexpected_seqs']}"),
        (
            "sockets incomplete / closed early",
            f"{r['sockets_incomplete']} / {json.dumps(r['sockets_closed_early']) or '{}'}",
        ),
        ("latency ms p50 / p90 / p99 / max", f"{lat['p50']} / {lat['p90']} / {lat['p99']} / {lat['max']}"),
        ("send->ack ms p50 / p99 / max", f"{rtt['p50']} / {rtt['p99']} / {rtt['max']}"),
        ("max client send lag ms", f"{r['max_send_lag_ms']}"),
        ("deliveries/s", f"{r['deliveries_per_s']}"),
        ("last delivery after last send s", f"{r['drain_after_last_send_s']}"),
        ("server CPU % of a core (send/all)", f"{cpu['server_pct']} / {cpu_all['server_pct']}"),
    ]
    for name, value in cpu["server_per_process_pct"].items():
        rows.append((f"  {name}", f"{value} / {cpu_all['server_per_process_pct'].get(name, '?')}"))
    rows += [
        ("postgres+redis CPU % (send/all)", f"{cpu['postgres_redis_pct']} / {cpu_all['postgres_redis_pct']}"),
        ("client CPU % (send/all)", f"{cpu['client_pct']} / {cpu_all['client_pct']}"),
        (
            "machine busy % of capacity",
            f"{cpu['machine_busy_pct']} of {cpu['machine_capacity_pct']} "
            f"(other processes/kernel: {cpu['other_pct']}; "
            f"before start: {report['background_busy_pct_before_start']})",
        ),
    ]
    counters = report.get("server_counters") or {}
    if counters:
        shown = {k: counters[k] for k in INTERESTING_COUNTERS if k in counters}
        rows.append(("server counters (delta)", json.dumps(shown, separators=(",", ":"))))
    width = max(len(k) for k, _ in rows)
    lines = ["fanout benchmark", "-" * (width + 30)]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    for item in r["incomplete_sockets"][:5]:
        lines.append(f"  incomplete: {json.dumps(item, separators=(',', ':'))}")
    lines.append(f"verdict: {'PASS' if report['ok'] else 'FAIL'}")
    return "\n".join(lines)


# --- orchestration ------------------------------------------------------------------------------------
def _expect(conns: list[multiprocessing.connection.Connection], kind: str, deadline: float) -> list[Any]:
    """One message of `kind` from every worker, by a deadline; a worker's error aborts the run."""
    out: list[Any] = [None] * len(conns)
    waiting = set(range(len(conns)))
    while waiting:
        remaining = deadline - time.time()
        if remaining <= 0:
            raise RuntimeError(f"timed out waiting for {kind!r} from workers {sorted(waiting)}")
        for ready in multiprocessing.connection.wait([conns[i] for i in waiting], timeout=min(remaining, 1.0)):
            index = next(i for i, c in enumerate(conns) if c is ready)
            try:
                message = conns[index].recv()
            except EOFError as exc:
                raise RuntimeError(f"client worker {index} died") from exc
            if message[0] == "error":
                raise RuntimeError(message[1])
            if message[0] != kind:
                raise RuntimeError(f"worker {index}: expected {kind!r}, got {message[0]!r}")
            out[index] = message[1]
            waiting.discard(index)
    return out


QUIET_BUSY_PCT = 30.0


def sender_indices(sockets: int, senders: int, modulus: int) -> list[int]:
    """Sender sockets spread evenly over the sockets and over the processes: socket i is served by server
    process i % P and read by client process i % C, so sender s gets an index ≡ s (mod P*C). Evenly spaced
    indices alone (0, 40, 80, ... for 200/5) would all land on one server process when P = 2."""
    chosen: list[int] = []
    for s in range(senders):
        base = s * sockets // senders
        index = (base + (s - base) % modulus) % sockets
        for _ in range(sockets):  # bounded: some index is free since senders <= sockets
            if index not in chosen:
                break
            index = (index + 1) % sockets
        chosen.append(index)
    return chosen


def wait_for_quiet(opts: Options) -> float:
    """On a shared machine, wait (at most `wait_quiet` s) until other work uses < QUIET_BUSY_PCT of a core:
    the benchmark's own processes need both cores to say anything about the server."""
    deadline = time.monotonic() + opts.wait_quiet
    busy = machine_busy_pct(1.0)
    while busy >= QUIET_BUSY_PCT and time.monotonic() < deadline:
        log(opts.quiet, f"machine busy at {busy}% of a core without us; waiting for it to be quiet")
        time.sleep(2.0)
        busy = machine_busy_pct(1.0)
    return busy


def run(opts: Options) -> dict[str, Any]:
    names = [f"bench{i:04d}" for i in range(opts.sockets)]
    total_messages = int(round(opts.rate * opts.duration))
    log(opts.quiet, f"starting {opts.server} x {opts.processes} (fresh database, migrate, seed_demo)")
    env = {**LOAD_TEST_ENV, **opts.server_env}
    with running_stack(processes=opts.processes, server=opts.server, env_overrides=env) as stack:
        log(opts.quiet, f"creating {opts.sockets} users")
        tokens = create_users(stack, names, via_api=opts.login_via_api, quiet=opts.quiet)
        conversation = create_conversation(stack, names)
        log(opts.quiet, f"conversation {conversation} with {opts.sockets} members")
        sender_at = {
            index: s
            for s, index in enumerate(sender_indices(opts.sockets, opts.senders, opts.processes * opts.client_procs))
        }
        specs = [
            SocketSpec(i, name, tokens[name], stack.ws_url(i % opts.processes), sender_at.get(i))
            for i, name in enumerate(names)
        ]
        run_tag = uuid.uuid4().hex[:12]
        ctx = multiprocessing.get_context("spawn")
        conns: list[multiprocessing.connection.Connection] = []
        workers: list[multiprocessing.process.BaseProcess] = []
        staff = staff_client(stack)
        try:
            for w in range(opts.client_procs):
                parent, child = ctx.Pipe()
                spec = WorkerSpec(
                    w,
                    conversation,
                    specs[w :: opts.client_procs],
                    opts.rate,
                    total_messages,
                    opts.senders,
                    run_tag,
                    max(1, opts.connect_concurrency // opts.client_procs),
                )
                worker = ctx.Process(target=worker_main, args=(child, spec), name=f"fanout-client-{w}", daemon=True)
                worker.start()
                child.close()
                conns.append(parent)
                workers.append(worker)
            log(opts.quiet, f"connecting and subscribing {opts.sockets} sockets from {opts.client_procs} processes")
            ready = _expect(conns, "ready", time.time() + SETUP_TIMEOUT_S)
            heads = sorted({h for r in ready for h in r["head_seqs"]})
            assert stack.proc is not None
            root = psutil.Process(stack.proc.pid)
            server_procs = [root, *root.children(recursive=True)]
            labels = {p.pid: process_label(p) for p in server_procs}  # now, while they are alive
            client_procs = [psutil.Process(), *(psutil.Process(w.pid) for w in workers if w.pid is not None)]
            counters_before = scrape_metrics(stack, staff)
            background = wait_for_quiet(opts) if opts.wait_quiet > 0 else machine_busy_pct(2.0)
            t0 = time.time() + 1.0  # a common start for all workers' schedules
            send_end = t0 + total_messages / opts.rate
            deadline = send_end + opts.drain_timeout
            for conn in conns:
                conn.send(("go", t0, deadline))
            log(opts.quiet, f"sending {total_messages} messages at {opts.rate:g}/s from {opts.senders} senders")
            time.sleep(max(0.0, t0 - time.time()))
            cpu_start = CpuSnapshot.take(server_procs, client_procs)
            time.sleep(max(0.0, send_end - time.time()))
            cpu_send_end = CpuSnapshot.take(server_procs, client_procs)
            sent = _expect(conns, "sent", deadline + 20)
            sender_results: list[SenderResult] = [sr for batch in sent for sr in batch]
            expected = sorted({seq for sr in sender_results for seq in sr.acked_seqs})
            for conn in conns:
                conn.send(("expect", expected))
            log(
                opts.quiet,
                f"{len(expected)} acked; waiting (until {opts.drain_timeout:g} s after the send "
                "window at most) for every delivery",
            )
            results = _expect(conns, "result", deadline + 30)
            cpu_drained = CpuSnapshot.take(server_procs, client_procs)
            counters_after = scrape_metrics(stack, staff)
            for started in workers:
                started.join(timeout=CLOSE_TIMEOUT_S * 2)
        finally:
            for started in workers:
                if started.is_alive():  # only our own client processes, by handle
                    started.terminate()
                    started.join(timeout=5)
            if staff is not None:
                staff.close()
        socket_results: list[SocketResult] = sorted((s for batch in results for s in batch), key=lambda s: s.index)
        server_log_tail = stack.log()[-4000:]
        log_path = str(stack.log_path)

    summary = aggregate(socket_results, sender_results, set(expected), t0)
    ok = summary["lost"] == 0 and summary["duplicates"] == 0 and summary["out_of_order"] == 0
    config = {k: v for k, v in asdict(opts).items() if k not in ("json_path", "quiet")}
    config["messages_scheduled"] = total_messages
    return {
        "benchmark": "fanout",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "results": summary,
        "subscribe_head_seqs": heads,
        "background_busy_pct_before_start": background,
        "cpu_send_window": cpu_report(cpu_start, cpu_send_end, labels),
        "cpu_until_drained": cpu_report(cpu_start, cpu_drained, labels),
        "server_counters": counters_delta(counters_before, counters_after),
        "server_log": log_path,
        "server_log_problems": [
            ln for ln in server_log_tail.splitlines() if re.search(r"Traceback|ERROR|Exception|exited with", ln)
        ][-20:],
        "ok": ok,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sockets", type=int, default=200, help="sockets, one user each (default 200)")
    parser.add_argument("--rate", type=float, default=50.0, help="total messages per second (default 50)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of sending (default 20)")
    parser.add_argument("--senders", type=int, default=5, help="sockets that also send (default 5)")
    parser.add_argument("--processes", type=int, default=1, help="server processes (default 1)")
    parser.add_argument("--server", choices=["uvicorn", "daphne"], default="uvicorn")
    parser.add_argument("--client-procs", type=int, default=2, help="client processes (default 2)")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="max seconds to wait for deliveries after sending stops (default 60)",
    )
    parser.add_argument("--connect-concurrency", type=int, default=20, help="handshakes in flight (default 20)")
    parser.add_argument(
        "--login-via-api",
        action="store_true",
        help="get every socket's token from POST /api/auth/token/ (slow: one PBKDF2 each)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the server processes (repeatable), e.g. DB_POOL_MAX=40",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before sending, wait up to this long for other load on the machine to stop",
    )
    parser.add_argument("--json", dest="json_path", help="also write the JSON report here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, only the final table")
    args = parser.parse_args(argv)
    if args.sockets < 1 or args.senders < 1 or args.senders > args.sockets:
        parser.error("need 1 <= --senders <= --sockets")
    if args.rate <= 0 or args.duration <= 0 or args.processes < 1 or args.client_procs < 1:
        parser.error("--rate, --duration, --processes and --client-procs must be positive")
    args.client_procs = min(args.client_procs, args.sockets)
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env takes KEY=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    opts = Options(
        args.sockets,
        args.rate,
        args.duration,
        args.senders,
        args.processes,
        args.server,
        args.client_procs,
        args.drain_timeout,
        args.connect_concurrency,
        args.login_via_api,
        dict(item.split("=", 1) for item in args.server_env),
        args.wait_quiet,
        args.json_path,
        args.quiet,
    )
    try:
        report = run(opts)
    except Exception as exc:
        print(f"fanout benchmark could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(render(report))
    if report["server_log_problems"]:
        print("server log (problems, tail):\n  " + "\n  ".join(report["server_log_problems"]))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"fanout-{opts.server}x{opts.processes}-{opts.sockets}s-{opts.rate:g}r-{stamp}.json"
    paths = [RESULTS_DIR / name] + ([Path(opts.json_path)] if opts.json_path else [])
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
    log(opts.quiet, "report written to " + ", ".join(str(p) for p in paths))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
