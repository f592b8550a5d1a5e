"""Start the real stack the way the README does (`manage.py serve`: ASGI server process(es) and the
agent worker) on a fresh PostgreSQL database and a private Redis channel prefix, for e2e tests and
benchmarks. Everything listens on 127.0.0.1 only."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("E2E_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_block(n: int) -> int:
    """A first port such that port..port+n-1 are all free (best effort)."""
    for _ in range(50):
        base = free_port()
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


@dataclass
class Stack:
    host: str
    ports: list[int]
    env: dict[str, str]
    database: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.ports[0]}"

    def ws_url(self, index: int = 0) -> str:
        return f"ws://{self.host}:{self.ports[index]}/ws/chat/"

    def http_url(self, index: int = 0) -> str:
        return f"http://{self.host}:{self.ports[index]}"

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=check,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def children(self, marker: str) -> list[psutil.Process]:
        """The stack's live child processes whose command line contains `marker` ("uvicorn", "runworker")."""
        assert self.proc is not None
        found = []
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if marker in " ".join(child.cmdline()):
                    found.append(child)
        return found

    def listening(self) -> list[psutil.Process]:
        """The server processes with a listening socket on the stack's first port (with ports="shared",
        every server process that is up and accepting)."""
        return [child for child in self.children("uvicorn") if self.connections(child, psutil.CONN_LISTEN)]

    def connections(self, child: psutil.Process, status: str = psutil.CONN_ESTABLISHED) -> int:
        """How many TCP sockets `child` holds on the stack's first port in `status`."""
        with contextlib.suppress(psutil.Error):
            return sum(1 for c in child.net_connections("tcp") if c.status == status and c.laddr.port == self.ports[0])
        return 0

    def child(self, marker: str) -> psutil.Process:
        found = self.children(marker)
        if not found:
            raise AssertionError(f"no {marker} process in the stack")
        return found[0]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        for proc in [self.proc, *self.extra]:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in [self.proc, *self.extra]:
            if proc is not None:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)


def create_database(template: str | None = None) -> str:
    name = f"chat_e2e_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return name


def stack_env(database_url: str) -> dict[str, str]:
    """The environment of a stack's processes (and of the commands that prepare its database): the test
    process's own, less pytest's variables, with a private database, channel prefix and secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": REDIS_URL,
            "CHANNEL_PREFIX": f"e2e{uuid.uuid4().hex[:8]}",
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
            "SECRET_KEY": "e2e-" + uuid.uuid4().hex,
        }
    )
    return env


# One migrated (and one migrated and seeded) database per test process, which every stack's database is
# copied from: a copy takes well under a second, where `migrate` and `seed_demo` in a fresh process take
# 10 to 15 s of a two-core machine, for each of the suite's twenty-odd stacks. Built on first use, with the
# code under test, so a copy is exactly what migrate and seed_demo would have made; the seeded one is a
# copy of the migrated one, so the migrations run once per process. Dropped when the process exits.
_templates: dict[bool, str] = {}
_templates_lock = threading.Lock()


def prepared_database(*, seed: bool) -> str:
    with _templates_lock:
        _prepare_template(seed)
        return create_database(_templates[seed])


def _prepare_template(seed: bool) -> None:
    """Called with the lock held."""
    if seed in _templates:
        return
    if seed:
        _prepare_template(False)
    name = create_database(_templates.get(False) if seed else None)
    atexit.register(drop_database, name)
    builder = Stack("127.0.0.1", [], stack_env(f"postgres://postgres@127.0.0.1:5432/{name}"), name)
    builder.env["DB_POOL_MIN"] = "0"
    if seed:
        builder.manage("seed_demo")
    else:
        builder.manage("migrate", "--noinput")
    _templates[seed] = name


def drop_database(name: str) -> None:
    with contextlib.suppress(Exception), psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_stack(
    *,
    processes: int = 1,
    server: str = "uvicorn",
    env_overrides: dict[str, str] | None = None,
    seed: bool = True,
    log_dir: Path | None = None,
    ready_timeout: float = 60,
    database_address: str = "127.0.0.1:5432",
    ports: str = "separate",
) -> Stack:
    """`database_address` ("host:port") is where the stack reaches PostgreSQL: another address than
    the server's own lets a test put a fault-injecting proxy (tests/support/faults.py) in between.
    `ports`: "separate" (each server process on its own port, so a test can reach one in particular:
    `stack.ws_url(index)`) or "shared" (every process on one port, as `make run` serves)."""
    database = prepared_database(seed=seed)
    env = stack_env(f"postgres://postgres@{database_address}/{database}")
    env.update({"AGENT_RUNNER": "worker", "PYTHONUNBUFFERED": "1"})
    env.update(env_overrides or {})
    shared = ports == "shared"
    port = free_port_block(1 if shared else processes)
    stack = Stack("127.0.0.1", [port + (0 if shared else i) for i in range(processes)], env, database)
    log_dir = log_dir or Path(os.environ.get("E2E_LOG_DIR", "/tmp"))
    stack.log_path = log_dir / f"{database}.log"
    log = stack.log_path.open("wb")
    stack.proc = subprocess.Popen(
        [
            *(sys.executable, "manage.py", "serve", "--port", str(port), "--processes", str(processes)),
            *("--server", server, "--ports", ports),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + ready_timeout
    for index in range(processes):
        while True:
            if stack.proc.poll() is not None:
                raise RuntimeError(f"stack exited early:\n{stack.log()[-3000:]}")
            try:
                if httpx.get(stack.http_url(index) + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                stack.stop()
                raise RuntimeError(f"stack not ready in {ready_timeout}s:\n{stack.log()[-3000:]}")
            time.sleep(0.2)
    return stack


@contextlib.contextmanager
def running_stack(**kwargs: object) -> Iterator[Stack]:
    stack = start_stack(**kwargs)  # type: ignore[arg-type]
    try:
        yield stack
    finally:
        stack.stop()
        drop_database(stack.database)


def login(stack: Stack, username: str, password: str = "demo-password") -> str:
    """An access token for a seeded user, from the real token endpoint."""
    response = httpx.post(f"{stack.base_url}/api/auth/token/", json={"username": username, "password": password})
    response.raise_for_status()
    return str(response.json()["access"])


def shared_conversation(stack: Stack, owner_token: str, member: str, *, title: str = "e2e", agent: bool = False) -> str:
    """A conversation owned by the token's user with `member` added as a member, over REST."""
    headers = {"Authorization": f"Bearer {owner_token}"}
    created = httpx.post(f"{stack.base_url}/api/conversations/", json={"title": title, "agent": agent}, headers=headers)
    created.raise_for_status()
    conv = str(created.json()["id"])
    httpx.post(
        f"{stack.base_url}/api/conversations/{conv}/members/",
        json={"username": member, "role": "member"},
        headers=headers,
    ).raise_for_status()
    return conv
