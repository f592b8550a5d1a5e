"""What the real ASGI servers write to their logs when someone puts a token where it does not belong,
and when someone opens a WebSocket on a path that does not exist (docs/operations.md, Security).

uvicorn (as `manage.py serve` runs it, plus `--log-level debug`) and daphne (`-v 2`, which also routes
Twisted's own log into the stdlib one) run as subprocesses with LOG_LEVEL=DEBUG, both on one fresh
database; each one's stdout and stderr go to a file the tests read. Requests are written byte for byte
on raw sockets so that every percent-encoding reaches the server exactly as sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from chat.management.commands.serve import server_argv
from tests.support.servers import ROOT, drop_database, free_port, prepared_database, stack_env
from tests.support.waiting import consistently, eventually

pytestmark = [pytest.mark.e2e]

SERVERS = ("uvicorn", "daphne")
DEBUG_FLAGS = {"uvicorn": ["--log-level", "debug"], "daphne": ["-v", "2"]}


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def _healthy(server: Server) -> bool:
    assert server.proc.poll() is None, f"{server.name} exited:\n{server.log()[-3000:]}"
    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"http://127.0.0.1:{server.port}/healthz", timeout=2)).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    database = prepared_database(seed=True)
    env = stack_env(f"postgres://postgres@127.0.0.1:5432/{database}")
    env.update(
        {
            "AGENT_RUNNER": "worker",  # no run is started here; no worker is needed
            "LOG_LEVEL": "DEBUG",
            "PYTHONUNBUFFERED": "1",
            "DB_POOL_MIN": "0",
        }
    )
    started: dict[str, Server] = {}
    logs = tmp_path_factory.mktemp("server-logs")
    try:
        for name in SERVERS:
            port = free_port()
            log_path = logs / f"{name}.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [*server_argv(name, "127.0.0.1", port), *DEBUG_FLAGS[name]],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            started[name] = Server(name, port, proc, log_path)
        for server in started.values():
            asyncio.run(eventually(lambda s=server: _healthy(s), 60, f"{server.name} to answer /healthz"))
        yield started
    finally:
        for server in started.values():
            server.proc.terminate()
        for server in started.values():
            try:
                server.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait(timeout=5)
        drop_database(database)


# --- raw requests ------------------------------------------------------------------------------------
WS_HEADERS = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: chat.v1\r\n"
)


async def raw_request(port: int, target: str, *, websocket: bool, extra_headers: str = "") -> int:
    """Send `GET target` exactly as given and return the response's status code. A WebSocket
    handshake that is accepted is closed again at once (the 101 is all these tests need)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        if websocket:
            head += WS_HEADERS.format(key=base64.b64encode(os.urandom(16)).decode())
        else:
            head += "Connection: close\r\n"
        writer.write((head + extra_headers + "\r\n").encode("latin-1"))
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        return int(status_line.split()[1])
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def token_pair(port: int) -> tuple[str, str]:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"http://127.0.0.1:{port}/api/auth/token/", json={"username": "alice", "password": "demo-password"}
        )
    response.raise_for_status()
    return response.json()["access"], response.json()["refresh"]


def encoded_forms(token: str) -> dict[str, str]:
    """Every way a client may spell a token in a URL that the server decodes back to the token."""
    every = "".join(f"%{byte:02X}" for byte in token.encode())
    return {
        "plain": token,
        "dots %2E": token.replace(".", "%2E"),
        "dots %2e": token.replace(".", "%2e"),
        "first letter %65": "%65" + token[1:],
        "letters here and there": re.sub(r"[A-Z]", lambda m: f"%{ord(m.group()):02x}", token),
        "every byte": every,
        "every byte, lower hex": every.lower(),
        "dots double-encoded %252E": token.replace(".", "%252E"),
        "every byte double-encoded": every.replace("%", "%25"),
    }


def targets(form: str) -> list[tuple[str, bool]]:
    """(request target, is a WebSocket handshake): the token in the query under a token name and under
    any name, and in the path, on HTTP and on the socket's endpoint."""
    return [
        (f"/api/conversations/?token={form}", False),
        (f"/api/conversations/?after=1&q={form}", False),
        (f"/nowhere/{form}/", False),
        (f"/c/{form}/", False),
        (f"/ws/chat/?token={form}", True),
        (f"/ws/chat/?x={form}", True),
        (f"/ws/chat/{form}/", True),
        (f"/ws/{form}", True),
    ]


def secrets_of(token: str) -> list[str]:
    """The token and its signature: either one in a log is the token leaked."""
    return [token, token.rsplit(".", 1)[1]]


def decodings(text: str) -> list[str]:
    """The text as written and every percent-decoding of it, down to a fixed point."""
    out = [text]
    while len(out) < 5:
        decoded = unquote(out[-1])
        if decoded == out[-1]:
            break
        out.append(decoded)
    return out


def assert_no_token_in(name: str, log: str, tokens: list[str]) -> bool:
    for variant in decodings(log):
        for token in tokens:
            for secret in secrets_of(token):
                assert secret not in variant, (
                    f"{name}: a token reached the log: "
                    + next(line for line in variant.splitlines() if secret in line)[:400]
                )
    return True


# --- tokens never reach a log line ---------------------------------------------------------------------
@pytest.mark.timeout(180)  # starts two servers
async def test_a_token_in_any_encoding_in_query_or_path_never_reaches_either_servers_log(
    servers: dict[str, Server],
) -> None:
    for server in servers.values():
        access, refresh = await token_pair(server.port)
        tokens = [access, refresh]
        for token in tokens:
            for form in encoded_forms(token).values():
                for target, websocket in targets(form):
                    await raw_request(server.port, target, websocket=websocket)
        # The token as a header is never logged either (the Authorization header is the right way in).
        await raw_request(server.port, "/ws/chat/", websocket=True, extra_headers=f"Authorization: Bearer {access}\r\n")
        await raw_request(
            server.port, "/api/conversations/", websocket=False, extra_headers=f"Authorization: Bearer {access}\r\n"
        )

        # The capture is real: the server logged at DEBUG and wrote the lines for these requests.
        def written(server: Server = server) -> bool:
            log = server.log()
            if server.name == "uvicorn":
                return '"WebSocket /ws/chat/?token=' in log and "DEBUG" in log
            return "WSCONNECTING /ws/chat/" in log and "GET /api/conversations/?" in log and "DEBUG" in log

        await eventually(written, 10, lambda server=server: f"{server.name}'s log lines:\n{server.log()[-3000:]}")
        # Anything a server logs late (daphne reaps application instances on a timer) is checked too.
        await consistently(lambda s=server, t=tokens: assert_no_token_in(s.name, s.log(), t), 1.0)
        # What was in the token's place is the marker.
        marker = '"WebSocket /ws/chat/?token=[redacted]"' if server.name == "uvicorn" else "?token=[redacted]"
        assert marker in server.log()


# --- unknown WebSocket paths ------------------------------------------------------------------------------
UNKNOWN_PATHS = ["/ws/nope/", "/ws/chat/extra/", "/ws/chat", "/favicon.ico"]


@pytest.mark.timeout(180)  # starts two servers
async def test_a_handshake_to_an_unknown_path_is_refused_cleanly_with_at_most_one_log_line(
    servers: dict[str, Server],
) -> None:
    """uvicorn offers the `websocket.http.response` extension: the refusal is a real HTTP 404. daphne
    does not: the handshake is closed before accept, which daphne answers 403. Either way no ERROR,
    no traceback, and at most one INFO/WARNING line per handshake."""
    expected = {"uvicorn": 404, "daphne": 403}
    # The server's line for the refused handshake: uvicorn's is levelled, daphne's is its access log.
    refusal_line = {"uvicorn": '"WebSocket {path}" 404', "daphne": "WSREJECT {path}"}
    for server in servers.values():
        for path in UNKNOWN_PATHS:
            before = len(server.log())
            assert await raw_request(server.port, path, websocket=True) == expected[server.name], (server.name, path)
            line = refusal_line[server.name].format(path=path)

            def lines(server: Server = server, before: int = before) -> list[str]:
                return server.log()[before:].splitlines()

            await eventually(lambda f=lines, line=line: any(line in x for x in f()), 10, lambda f=lines: "\n".join(f()))

            def clean(name: str = server.name, path: str = path, lines: Callable[[], list[str]] = lines) -> bool:
                found = lines()
                assert not [x for x in found if "Traceback" in x or re.search(r"\bERROR\b", x)], "\n".join(found)
                levelled = [x for x in found if re.search(r"\b(INFO|WARNING)\b", x)]
                assert len(levelled) <= 1, (name, path, levelled)
                return True

            # Whatever a server logs after its handshake line (an application's end, a reaped
            # instance) counts too.
            await consistently(clean, 0.5)
