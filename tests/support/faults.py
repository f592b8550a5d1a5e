"""Fault injection for tests against the real stack: a private Redis server that can be killed and
started again on the same port, and a TCP proxy in front of PostgreSQL that can refuse connections.

Both are real processes/sockets, not mocks: the stack under test sees exactly what it would see in
production when Redis crashes (connections reset, then connection refused, then an empty Redis on
the same address) or when PostgreSQL stops accepting connections (every open connection reset,
every new one refused with ECONNREFUSED).

The shared Redis on 6379 and the shared PostgreSQL are never touched: the Redis here is our own
process on a free port, and the proxy only forwards to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from tests.support.servers import free_port


def _pingable(port: int, timeout: float = 0.5) -> bool:
    """A raw RESP PING, so the check does not depend on a client library's reconnect logic."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """`redis-server` on 127.0.0.1:<port>, in the foreground as our child, with nothing on disk:
    after `kill()` + `start()` it is empty, like a production Redis restarted without persistence."""

    extra_args: tuple[str, ...] = ()  # more redis-server options (BusyRedisServer enables DEBUG)

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="faults-redis-")
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        if self.running():
            raise RuntimeError("redis-server is already running")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                self._dir,
                "--loglevel",
                "warning",
                *self.extra_args,
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not _pingable(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on {self.port} exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server on {self.port} did not answer PING in {timeout}s")
            time.sleep(0.02)
        self.starts += 1

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown. Open connections are reset by the kernel and new ones
        refused until `start()`; whatever was in memory is gone."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server must not ignore the kill
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: the server accepts TCP connections (the kernel does) but never answers, the way
        a hung or partitioned Redis looks to clients. Calls hang until their own timeouts."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TcpProxy:
    """A TCP forwarder (127.0.0.1:<port> → upstream) running on its own event loop thread.

    `refuse()` closes the listener and resets every open connection in both directions (RST, via
    SO_LINGER 0): clients see "connection reset" on open connections and ECONNREFUSED on new ones,
    exactly as if the server had gone away. `restore()` listens again on the same port."""

    def __init__(self, upstream_host: str, upstream_port: int, port: int | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port or free_port()
        self.accepted = 0
        self.refused_since: float | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"tcp-proxy-{self.port}", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._thread.start()

    # --- control (from any thread) --------------------------------------------------------------
    def _run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        self._run(self._listen())

    def restore(self) -> None:
        self._run(self._listen())
        self.refused_since = None

    def refuse(self) -> None:
        self._run(self._refuse())
        self.refused_since = time.monotonic()

    @property
    def listening(self) -> bool:
        return self._server is not None

    def open_connections(self) -> int:
        return int(self._run(self._count()))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self._refuse())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- on the proxy's loop -----------------------------------------------------------------------
    async def _count(self) -> int:
        return len(self._pairs)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        # reuse_address: the port was ours a moment ago; connections we reset may linger in the kernel.
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _refuse(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # stop listening first: from now on connect() gets ECONNREFUSED
        for client, upstream in list(self._pairs):
            _reset(client)
            _reset(upstream)
        self._pairs.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._server is None:  # accepted in the instant before refuse() closed the listener
            _reset(client_writer)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(client_writer)
            return
        self.accepted += 1
        pair = (client_writer, upstream_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                _pump(client_reader, upstream_writer), _pump(upstream_reader, client_writer), return_exceptions=True
            )
        finally:
            self._pairs.discard(pair)
            for writer in pair:
                writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        # PostgreSQL's protocol has no half-close: one side ending ends the connection.
        writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN, as a dead peer's kernel would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def refused(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:<port> (connect() is refused)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


class BusyRedisServer(RedisServer):
    """A private redis-server that lets `busy()` keep it occupied: Redis alive but lagging, the way it
    looks while another client's heavy commands hold its single thread."""

    extra_args = ("--enable-debug-command", "yes")

    @contextlib.contextmanager
    def busy(self, slice_s: float) -> Iterator[None]:
        """While inside: a side connection runs DEBUG SLEEP `slice_s` back to back, so every other
        client's command, connection accept and handshake waits up to a slice (or two) for its turn."""
        stop = threading.Event()

        def occupy() -> None:
            with socket.create_connection(("127.0.0.1", self.port), timeout=slice_s + 10) as sock:
                command = f"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n${len(str(slice_s))}\r\n{slice_s}\r\n".encode()
                while not stop.is_set():
                    sock.sendall(command)
                    if not sock.recv(64).startswith(b"+OK"):
                        raise RuntimeError("DEBUG SLEEP was refused")

        thread = threading.Thread(target=occupy, name=f"busy-redis-{self.port}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=slice_s + 10)


def hold_exclusive_lock(table: str, locked: threading.Event, release: threading.Event) -> None:
    """Another database session's ACCESS EXCLUSIVE lock on `table`, held from `locked` until `release`
    (at most 30 s): a query on the table waits on it as it would on a slow scan. Run it in a thread of
    its own (its own connection), and set `release` in a `finally`."""
    # Imported here: the benchmark scripts import this module in processes that never set Django up.
    from django.db import connection, transaction

    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {connection.ops.quote_name(table)} IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(30)
    finally:
        connection.close()


async def lose_hot_buffer(conversation_id: str) -> None:
    """Empty the conversation's hot buffer in Redis (as a Redis restart, or its age limit, would): a
    replay must then come from the log."""
    from chat.infra import message_buffer  # here, not at the top: as above

    buffer: Any = message_buffer.get_buffer()
    await buffer._redis().delete(buffer.key(message_buffer.conversation_stream(conversation_id)))
