"""Pure-CPU tool code runs here: in a few worker processes with bounded memory and CPU, off the event
loop, each call under a wall-clock timeout after which its worker is killed (and a fresh one started).

Why processes: a tool runs next to every other run the agent worker holds, and synchronous code on
the event loop freezes them all; `asyncio.timeout` cannot interrupt it and a thread cannot be
killed. The tools check their inputs so that no argument should make them slow; this is the defence
for the case one of those checks is wrong.

Why not concurrent.futures.ProcessPoolExecutor: on Python 3.11 it cannot kill one stuck worker (only
break the whole pool, failing every call in flight), so each worker here is our own process with
its own pipe, handed to one call at a time.

- Each call waits for an idle worker in a thread of this sandbox (`workers` of them), so the event
  loop only awaits a future; a warm call costs a thread hop and a pipe round trip (about 0.2 ms).
- A worker sets its own limits before it serves anything: RLIMIT_AS (`memory_bytes`: a MemoryError
  becomes a clear error and the worker lives on), RLIMIT_CPU (`cpu_s` over its whole life: the kernel
  ends a worker that spins while nobody watches, e.g. after its parent died), no core files.
- A worker serves `calls_per_worker` calls, then is replaced, so nothing it accumulates lives long.
- A worker is a fresh interpreter (`python -I -c …`), not a fork and not multiprocessing's spawn:
  a fork of the threaded agent worker copies locks other threads hold, and spawn re-imports the
  parent's main module, which runs any script that lacks an `if __name__ == "__main__"` guard
  again in every worker. It gets an empty environment (no database URL, no keys) and only its pipe.
  This module and the called function's module must therefore import without Django (a worker has
  no settings), and only the stdlib is imported here.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import multiprocessing
import pickle
import resource
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# What travels on a worker's pipe: "ready" once, then per call (status, value).
_READY = "ready"
_OK, _REFUSED, _FAILED = "ok", "refused", "failed"

logger = logging.getLogger(__name__)


class ToolError(Exception):
    """A tool refused its input (e.g. division by zero) or could not finish it (e.g. a sandbox
    timeout): reported to the model as the tool's error, not a crash. Defined here, with no Django
    import, because sandboxed code raises it in a worker process."""


@dataclass(frozen=True)
class SandboxLimits:
    workers: int = 2  # worker processes (and calls evaluated at once); more calls wait for one
    timeout_s: float = 2.0  # wall clock per call; then the worker is killed
    memory_bytes: int = 256 * 2**20  # RLIMIT_AS of a worker
    cpu_s: int = 10  # RLIMIT_CPU of a worker, over all its calls
    calls_per_worker: int = 200  # then the worker is replaced
    start_timeout_s: float = 30.0  # for a new worker to be ready (~50 ms; far more on a loaded machine)

    def __post_init__(self) -> None:
        # A limit never fails open: zero or negative values are refused, not read as "no limit".
        for name in ("workers", "timeout_s", "memory_bytes", "cpu_s", "calls_per_worker", "start_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, not {getattr(self, name)!r}")


class Sandbox:
    def __init__(self, limits: SandboxLimits | None = None, *, name: str = "sandbox") -> None:
        self.limits = limits or SandboxLimits()
        self.name = name
        self._threads = ThreadPoolExecutor(max_workers=self.limits.workers, thread_name_prefix=name)
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self.started = 0  # workers started so far (a killed or recycled one is replaced by a new one)
        _sandboxes.add(self)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in a worker process. `fn` must be importable by name (a module-level function
        or a builtin) and its arguments and result picklable. A ToolError it raises is raised here;
        a timeout, a worker that dies or runs out of memory becomes a ToolError too."""
        loop = asyncio.get_running_loop()
        # Cancelling the await (the run was cancelled, or the tool's own timeout) cancels a call
        # still waiting for a worker; one already sent ends within timeout_s, by reply or kill.
        return await loop.run_in_executor(self._threads, self._call, fn, args)

    def close(self) -> None:
        """Stop the idle workers (busy ones end with their call; their threads are not waited for)."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.stop()

    # --- in a sandbox thread ------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        worker = self._take()
        try:
            status, value = worker.call(fn, args, self.limits.timeout_s)
        except _Stuck:
            worker.kill()
            logger.warning(
                "%s: worker %s passed the %gs time limit; killed", self.name, worker.pid, self.limits.timeout_s
            )
            raise ToolError(f"{self.name} took longer than {self.limits.timeout_s:g}s and was stopped") from None
        except _Died as exc:
            worker.kill()
            logger.warning("%s: worker %s died: %s", self.name, worker.pid, exc)
            raise ToolError(f"{self.name} was stopped: {exc}") from None
        except BaseException:
            worker.kill()  # an unknown state: never hand this worker to another call
            raise
        if worker.calls >= self.limits.calls_per_worker:
            worker.stop()
        else:
            with self._lock:
                self._idle.append(worker)
        if status == _REFUSED:  # the function's own ToolError
            raise ToolError(value)
        if status == _FAILED:
            raise ToolError(f"{self.name} failed: {value}")
        return value

    def _take(self) -> _Worker:
        found: _Worker | None = None
        dead: list[_Worker] = []
        with self._lock:
            while self._idle and found is None:
                worker = self._idle.pop()
                if worker.alive():
                    found = worker
                else:
                    dead.append(worker)  # ended while idle (e.g. by the OOM killer)
            if found is None:
                # Never more workers than threads: a worker is idle or held by the thread using it.
                self.started += 1
                name = f"{self.name}-{self.started}"
        for gone in dead:
            gone.kill()  # reaps it
        return found if found is not None else _Worker.start(self.limits, name)


_sandboxes: weakref.WeakSet[Sandbox] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Idle workers end on their own when this process's end of their pipe closes; this only ends
    them in order (and reaps them) instead of leaving that to interpreter teardown."""
    for sandbox in list(_sandboxes):
        sandbox.close()


class _Stuck(Exception):
    pass


class _Died(Exception):
    pass


# The worker's command: this package's parent directory first on its path, then its loop.
_ROOT = str(Path(__file__).resolve().parent.parent)
_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from agents.sandbox import _main; _main(sys.argv[2:])"


class _Worker:
    def __init__(self, process: subprocess.Popen[bytes], conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.calls = 0

    @classmethod
    def start(cls, limits: SandboxLimits, name: str) -> _Worker:
        ours, theirs = multiprocessing.Pipe()  # a socketpair: the worker gets its end's descriptor
        fd = theirs.fileno()
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, _ROOT, str(fd), str(limits.memory_bytes), str(limits.cpu_s)],
                pass_fds=(fd,),
                env={"LC_ALL": "C.UTF-8"},
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise ToolError(f"{name} could not start") from exc
        finally:
            theirs.close()
        worker = cls(process, ours)
        try:
            if not ours.poll(limits.start_timeout_s) or ours.recv() != _READY:
                raise ToolError(f"{name} could not start")
        except (EOFError, OSError) as exc:
            worker.kill()
            raise ToolError(f"{name} could not start") from exc
        except BaseException:
            worker.kill()
            raise
        return worker

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], timeout_s: float) -> tuple[str, Any]:
        self.calls += 1
        try:
            self.conn.send((fn, args))
            if not self.conn.poll(timeout_s):
                raise _Stuck
            reply = self.conn.recv()
        except (EOFError, OSError):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(1.0)
            raise _Died(_exit_reason(self.process.returncode)) from None
        if not (isinstance(reply, tuple) and len(reply) == 2 and reply[0] in (_OK, _REFUSED, _FAILED)):
            raise _Died("the worker answered nonsense")
        return reply

    def stop(self) -> None:
        """Ask an idle worker to end (EOF on its pipe); kill it if it does not."""
        self.conn.close()
        try:
            self.process.wait(1.0)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        with contextlib.suppress(OSError):  # already gone
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5.0)


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "the worker stopped answering"
    if exitcode == -signal.SIGXCPU:
        return "it used too much CPU time"
    if exitcode == -signal.SIGKILL:
        return "its worker was killed (its CPU time or memory ran out)"
    return f"its worker ended with code {exitcode}"


# --- in the worker process ------------------------------------------------------------------------
def _main(argv: list[str]) -> None:
    fd, memory_bytes, cpu_s = (int(arg) for arg in argv)
    # Ctrl-C on the agent worker is the parent's to handle; this process ends with its pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _serve(Connection(fd), memory_bytes, cpu_s)


def _serve(conn: Connection, memory_bytes: int, cpu_s: int) -> None:
    """The worker's loop: limits first, then one call at a time until the pipe closes."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # Soft limit: SIGXCPU (ends the process); the hard limit a second later is the kernel's SIGKILL.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    conn.send(_READY)
    while True:
        try:
            fn, args = conn.recv()
        except EOFError:
            return
        reply: tuple[str, Any]
        try:
            reply = (_OK, fn(*args))
        except ToolError as exc:
            reply = (_REFUSED, str(exc))
        except MemoryError:
            reply = (_FAILED, "it needed more memory than it may use")
        except RecursionError:
            reply = (_FAILED, "its input is too deeply nested")
        except Exception as exc:
            # A bug in the tool, not the input's fault: the caller sees its type only.
            reply = (_FAILED, type(exc).__name__)
        try:
            conn.send(reply)
        except (ValueError, TypeError, AttributeError, pickle.PicklingError, MemoryError):
            conn.send((_FAILED, "its result cannot be returned"))
