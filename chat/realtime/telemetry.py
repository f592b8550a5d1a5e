"""The process's telemetry task: one cheap periodic probe per event loop (server process or agent
worker) that measures the loop's lag and publishes what is counted locally.

Every PROBE_INTERVAL_S it sleeps and records how late it woke (chat_event_loop_lag_seconds: a loop
blocked by CPU work or a synchronous call shows here first), flushes the batched per-frame counts
(monitoring/metrics/meter.py), sets the gauges read from this process's hub (connections, users,
subscriptions) and breakers, and every PROCESS_EVERY-th round copies its process figures for
multiprocess mode. A round costs tens of microseconds; nothing here runs per frame.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Protocol, TypeVar

from chat.infra.breakers import all_breakers
from chat.tiers import all_tiers
from monitoring.metrics import current_tier
from monitoring.metrics.exposition import record_process_stats
from monitoring.metrics.families import (
    BREAKER_STATE,
    BREAKER_STATES,
    COMMAND_DURATION,
    COMMAND_NAMES,
    COMMANDS_TOTAL,
    CONNECTIONS,
    ERROR_CODES,
    EVENT_LOOP_LAG,
    OTHER,
    SUBSCRIPTIONS,
    USERS_ONLINE,
    preinitialise_known,
)
from monitoring.metrics.meter import meter

logger = logging.getLogger(__name__)

PROBE_INTERVAL_S = 0.5
PROCESS_EVERY = 10  # process_* every 5 s: reading /proc costs more than the rest of a round


class Sockets(Protocol):
    """What the probe reads of a hub: its users' and its conversations' local sockets."""

    @property
    def users(self) -> Mapping[int, Collection[object]]: ...

    @property
    def conversations(self) -> Mapping[str, Collection[object]]: ...


_tasks: dict[asyncio.AbstractEventLoop, tuple[asyncio.Task[None], Sockets | None]] = {}


def ensure_started(role: str, hub: Sockets | None = None) -> None:
    """Start this loop's probe once (a no-op afterwards). `hub`: the server process's sockets; a
    probe started without one (an embedded runner came first) is restarted with it."""
    loop = asyncio.get_running_loop()
    task, had_hub = _tasks.get(loop, (None, None))
    if task is not None and not task.done():
        if hub is None or had_hub is hub:
            return
        task.cancel()
        role = "server"
    for stale in [lp for lp in _tasks if lp.is_closed()]:
        _tasks.pop(stale, None)
    _tasks[loop] = (loop.create_task(_probe(role, hub), name="telemetry-probe"), hub)


def publish(role: str, hub: Sockets | None, *, with_process: bool) -> None:
    """One round's publishing (without the lag measurement)."""
    meter.flush()
    if hub is not None:
        CONNECTIONS.set(sum(len(s) for s in hub.users.values()))
        USERS_ONLINE.set(len(hub.users))
        SUBSCRIPTIONS.set(sum(len(s) for s in hub.conversations.values()))
    for name, b in all_breakers().items():
        BREAKER_STATE.labels(name).set(BREAKER_STATES.get(b.state, 2))
    if with_process:
        record_process_stats(role)


async def _probe(role: str, hub: Sockets | None) -> None:
    loop = asyncio.get_running_loop()
    rounds = 0
    preinitialise_known(tiers=all_tiers())
    while True:
        started = loop.time()
        await asyncio.sleep(PROBE_INTERVAL_S)
        EVENT_LOOP_LAG.observe(max(0.0, loop.time() - started - PROBE_INTERVAL_S))
        try:
            publish(role, hub, with_process=rounds % PROCESS_EVERY == 0)
        except Exception:  # metrics must never stop; the next round tries again
            logger.exception("telemetry round failed")
        rounds += 1


# --- commands: chat_commands_total{command,outcome} and chat_command_duration_seconds{command} ---------
class _Command:
    __slots__ = ("started", "name", "outcome")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.name = OTHER
        self.outcome = "ok"


_command: contextvars.ContextVar[_Command | None] = contextvars.ContextVar("chat_command", default=None)
_children: dict[tuple[str, str], tuple[Any, Any]] = {}
C = TypeVar("C")


def note_command(name: str) -> None:
    """The frame being handled is command `name` (a bounded label: unknown names count as other)."""
    current = _command.get()
    if current is not None:
        current.name = name if name in COMMAND_NAMES else OTHER


def note_outcome(code: str) -> None:
    """The frame being handled is answered with error `code`."""
    current = _command.get()
    if current is not None:
        current.outcome = code if code in ERROR_CODES else OTHER


def instrumented(
    receive: Callable[[C, str | None, bytes | None], Awaitable[None]],
) -> Callable[[C, str | None, bytes | None], Awaitable[None]]:
    """Wrap a consumer's `receive`: every frame is one command, timed from arrival until its reply
    is queued, counted by name and outcome; counts made meanwhile (a rate-limit refusal) carry the
    socket's tier. Frames arriving while the socket closes are not commands."""

    @functools.wraps(receive)
    async def wrapper(consumer: C, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if getattr(consumer, "_closing", False):
            return await receive(consumer, text_data, bytes_data)
        if getattr(consumer, "authenticated", False):
            current_tier.set(consumer.limits.name)  # type: ignore[attr-defined]
        command = _Command()
        token = _command.set(command)
        try:
            await receive(consumer, text_data, bytes_data)
        finally:
            _command.reset(token)
            _record(command)

    return wrapper


def _record(command: _Command) -> None:
    key = (command.name, command.outcome)
    children = _children.get(key)
    if children is None:
        children = _children[key] = (COMMANDS_TOTAL.labels(*key), COMMAND_DURATION.labels(command.name))
    children[0].inc()
    children[1].observe(time.perf_counter() - command.started)
