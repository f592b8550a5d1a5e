"""A scriptable OpenAI-compatible chat-completions server for tests: the only fake in the suite.

It listens on a real 127.0.0.1 port (a thread, so any event loop and any process can reach it),
answers `POST /v1/chat/completions` with `stream: true` as `text/event-stream` over chunked
HTTP/1.1 like real servers do, and records every request it receives.

Each request takes the next scripted reply from the queue (`server.script(...)`); when the queue is
empty it falls back to `server.rule` (by default: answer from the last tool message if there is
one, else echo the prompt). A scripted reply is a `Reply` or a function of the request returning
one. Failures are replies too: `http_error`, `dropped`, `malformed`, `stalled`.

Helpers for servers that are not there: `refusing_port()` (nothing accepts: connection refused),
`blackhole_port()` (a listener whose accept queue is full: connecting hangs) and `hold_port(port)`
(keeps a stopped fake's port refusing, and free of other tenants, until the fake restarts on it).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    @property
    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.body.get("tools", [])]


@dataclass
class Reply:
    """How to answer one request. `events` are the SSE `data:` payloads, sent in order."""

    status: int = 200
    events: list[str] = field(default_factory=list)
    error_body: bytes = b""  # for status >= 400
    drop_after: int | None = None  # close the socket after this many events, mid-body
    stall_after: int | None = None  # stop sending after this many events (0: before the headers)
    stall_s: float = 0.0


Script = Reply | Callable[[RecordedRequest], Reply]


def _chunk(delta: dict[str, Any], finish_reason: str | None = None, cid: str = "chatcmpl-fake") -> str:
    return json.dumps(
        {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
    )


def _usage_chunk(usage: tuple[int, int]) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "fake",
            "choices": [],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": usage[0] + usage[1]},
        }
    )


def split(text: str, pieces: int) -> list[str]:
    """`text` cut into `pieces` non-empty parts (fewer if it is shorter), in order."""
    pieces = max(1, min(pieces, len(text)))
    size, extra = divmod(len(text), pieces)
    parts, start = [], 0
    for i in range(pieces):
        end = start + size + (1 if i < extra else 0)
        parts.append(text[start:end])
        start = end
    return parts


def answer(text: str, *, pieces: int = 4, usage: tuple[int, int] | None = (11, 7)) -> Reply:
    """The model answers `text` in `pieces` content chunks, then stop, then a usage chunk."""
    events = [_chunk({"role": "assistant", "content": ""})]
    events += [_chunk({"content": part}) for part in split(text, pieces)]
    events.append(_chunk({}, "stop"))
    if usage is not None:
        events.append(_usage_chunk(usage))
    events.append("[DONE]")
    return Reply(events=events)


@dataclass(frozen=True)
class ToolCallSpec:
    name: str
    arguments: dict[str, Any] | str  # a str is sent verbatim (e.g. invalid JSON)
    call_id: str | None = None  # None: the model sends no id


def tool_calls(*calls: ToolCallSpec, pieces: int = 3, usage: tuple[int, int] | None = (20, 9)) -> Reply:
    """The model calls tools: id and name in a call's first delta, its arguments JSON split across
    `pieces` further deltas, then finish_reason tool_calls, then a usage chunk."""
    events = [_chunk({"role": "assistant", "content": None})]
    for index, call in enumerate(calls):
        first: dict[str, Any] = {"index": index, "type": "function", "function": {"name": call.name, "arguments": ""}}
        if call.call_id is not None:
            first["id"] = call.call_id
        events.append(_chunk({"tool_calls": [first]}))
        raw = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
        for part in split(raw, pieces) if raw else []:
            events.append(_chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]}))
    events.append(_chunk({}, "tool_calls"))
    if usage is not None:
        events.append(_usage_chunk(usage))
    events.append("[DONE]")
    return Reply(events=events)


def tool_call(name: str, arguments: dict[str, Any] | str, call_id: str | None = "call_fake_1", **kw: Any) -> Reply:
    return tool_calls(ToolCallSpec(name, arguments, call_id), **kw)


def http_error(status: int, message: str = "the fake model failed") -> Reply:
    body = json.dumps({"error": {"message": message, "type": "server_error"}}).encode()
    return Reply(status=status, error_body=body)


def dropped(reply: Reply, after: int) -> Reply:
    """`reply`, but the connection is closed after `after` events, in the middle of the body."""
    return Reply(status=reply.status, events=reply.events, drop_after=after)


def stalled(reply: Reply, after: int, seconds: float) -> Reply:
    """`reply`, but the server goes quiet for `seconds` after `after` events (0: before the headers)."""
    return Reply(status=reply.status, events=reply.events, stall_after=after, stall_s=seconds)


def malformed(after_text: str = "Hel") -> Reply:
    """Some answer text, then a chunk that is not JSON."""
    return Reply(
        events=[
            _chunk({"content": after_text}),
            '{"id": "chatcmpl-fake", "choices": [{"delta": {"con',
            _chunk({}, "stop"),
            "[DONE]",
        ]
    )


def answer_from_tool(request: RecordedRequest) -> Reply:
    """Default rule: after a tool round, answer with what the tool returned (a calculator's value
    as "The answer is 391."); otherwise echo the user's last message."""
    last = request.messages[-1] if request.messages else {}
    if last.get("role") == "tool":
        try:
            result = json.loads(last.get("content") or "null")
        except ValueError:
            result = last.get("content")
        if isinstance(result, dict) and "value" in result:
            return answer(f"The answer is {result['value']}.")
        return answer(f"The tool said: {json.dumps(result)}")
    return answer(f"You said: {last.get('content', '')}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeLLM

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (timeouts, dropped streams) are what the failure tests are about.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked bodies, as real model servers speak
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def do_POST(self) -> None:
        try:
            self._answer()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test): fine
            self.close_connection = True

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"__unparsed__": raw.decode(errors="replace")}
        request = RecordedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        fake = self.server.fake
        reply = fake._next_reply(request)
        if self.path != fake.path:
            reply = Reply(status=404, error_body=b'{"error": {"message": "no such route"}}')
        if reply.stall_after == 0 and fake._stall(reply.stall_s):
            self.close_connection = True
            return
        if reply.status >= 400:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply.error_body)))
            self.end_headers()
            self.wfile.write(reply.error_body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        for sent, data in enumerate(reply.events):
            if reply.drop_after is not None and sent == reply.drop_after:
                self._drop()
                return
            if reply.stall_after is not None and sent == reply.stall_after and self._stall_watching(reply.stall_s):
                self._drop()
                return
            payload = f"data: {data}\n\n".encode()
            self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _stall_watching(self, seconds: float) -> bool:
        """Go quiet mid-stream, watching the socket: True (abandon the reply) at shutdown or once the
        client hangs up, which is recorded in `fake.hangups` (when, by the monotonic clock)."""
        fake = self.server.fake
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if fake._closing.is_set():
                return True
            readable, _, _ = select.select([self.connection], [], [], 0.005)
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                fake.hangups.append(time.monotonic())
                return True
        return False

    def _drop(self) -> None:
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class FakeLLM:
    """The fake model server. Use as a context manager, or `start()` / `close()`."""

    path = "/v1/chat/completions"

    def __init__(self, rule: Callable[[RecordedRequest], Reply] = answer_from_tool, *, port: int = 0) -> None:
        """`port`: 0 picks a free one; a given port restarts a stopped fake where clients expect it."""
        self.rule = rule
        self.requests: list[RecordedRequest] = []
        # When clients hung up on a reply stalled mid-stream (time.monotonic()): how fast a cancel
        # reaches the model server.
        self.hangups: list[float] = []
        self._queue: deque[Script] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()  # releases stalled replies at shutdown
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-llm", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """What AGENT_LLM_BASE_URL should be (the backend appends /chat/completions)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: Script) -> None:
        with self._lock:
            self._queue.extend(replies)

    def _next_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            script = self._queue.popleft() if self._queue else self.rule
        return script if isinstance(script, Reply) else script(request)

    def _stall(self, seconds: float) -> bool:
        """Go quiet; True if the server is shutting down (the reply should be abandoned)."""
        return self._closing.wait(seconds)

    def start(self) -> FakeLLM:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port bound but not listening: connecting is refused, and no one else can take the port
    while the test holds it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@contextlib.contextmanager
def hold_port(port: int) -> Iterator[None]:
    """Bind `port` without listening while a fake is down: connections to it are refused, and no
    other process can take it before the fake is started again on it (FakeLLM(port=port))."""
    with socket.socket() as sock:
        # The stopped server's closed connections may linger in TIME_WAIT on this port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        yield


@contextlib.contextmanager
def blackhole_port() -> Iterator[int]:
    """A port whose listener never accepts and whose accept queue is full: new connections hang in
    the handshake, so only a connect timeout ends them."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            filler = socket.socket()
            filler.settimeout(0.2)
            try:
                filler.connect(("127.0.0.1", port))
            except OSError:  # the queue is full: this connect hung until its timeout
                filler.close()
                break
            fillers.append(filler)
        else:
            raise RuntimeError("could not fill the accept queue")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@contextlib.contextmanager
def fake_backend(settings: Any, *, api_key: str, timeout_s: float) -> Iterator[FakeLLM]:
    """A FakeLLM made the agents' backend (the OpenAI-compatible one) through pytest-django's `settings`.
    Enter it before the test's first message: the run supervisor of the test's event loop is created by
    that message and reads AGENT_BACKEND (through get_backend) once, when it is created."""
    with FakeLLM() as server:
        settings.AGENT_BACKEND = "openai"
        settings.AGENT_LLM_BASE_URL = server.base_url
        settings.AGENT_LLM_MODEL = "fake-model"
        settings.AGENT_LLM_API_KEY = api_key
        settings.AGENT_LLM_TIMEOUT_S = timeout_s
        yield server
