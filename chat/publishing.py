"""The one publish road: what a committed change must make happen elsewhere, and when.

A service that changes durable state schedules its effects here (`after_commit`) inside its own
transaction; they happen only once that transaction commits, so nobody is ever told about a row
that does not exist (or outlives a change it should have been stopped by). Callers — socket
commands, REST views, admin actions, the agent runtime and runner, management commands — never
publish or wake anything themselves. This is the only module that calls the bus.

Where the effects run depends on who called the service:
- `await run_service(fn, ...)` from async code: the effects are collected while the service runs
  on the database thread and delivered in order by the caller before it returns (a `send` is
  published before its reply, as it always was).
- a sync caller inside the ASGI server (a Django view, the admin): handed to the server's event
  loop, where one task per loop delivers them in commit order; the request does not wait on Redis.
- a sync caller with no event loop (a management command, a sync test): delivered before the
  commit hook returns.
Delivery never raises for a Redis failure: the bus defers what it cannot publish now.

`announce` is the road for ephemeral frames (typing, read, presence), which change nothing
durable and so are sent at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from asgiref.sync import SyncToAsync, async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction

from chat.infra import bus
from chat.infra.doorbells import EphemeralDoorbell, LocalRunner, UserMessage
from chat.infra.message_buffer import forget_buffered
from chat.infra.per_loop import PerLoop
from chat.wire.frames import StoredEvent

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class EventsCommitted:
    events: tuple[StoredEvent, ...]


@dataclass(frozen=True)
class UserTold:
    user_id: int
    message: UserMessage


@dataclass(frozen=True)
class NotificationCommitted:
    user_id: int
    seq: int
    frame: str
    max_events: int
    max_age_s: float


@dataclass(frozen=True)
class RunnerRung:
    """Queued work for the runners (`run_id` None), or a running run to stop."""

    run_id: str | None = None


@dataclass(frozen=True)
class EventsScrubbed:
    """Stored events whose data was rewritten (a deleted message's text): the hot buffer must not
    replay the copies it holds."""

    conversation_id: str
    seqs: tuple[int, ...]


Effect = EventsCommitted | UserTold | NotificationCommitted | RunnerRung | EventsScrubbed

# While an async caller runs a service through `run_service`, the effects it commits land here.
_collected: ContextVar[list[Effect] | None] = ContextVar("chat_publishing_collected", default=None)


def after_commit(effect: Effect) -> None:
    """Make `effect` happen once the current transaction commits (at once outside a transaction)."""
    transaction.on_commit(functools.partial(_committed, effect))


def events_committed(events: Sequence[StoredEvent]) -> None:
    after_commit(EventsCommitted(tuple(events)))


async def run_service(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run the sync service `fn` on the database thread, then deliver what it committed, in
    order, before returning (also when it raised after committing part of its work)."""
    effects: list[Effect] = []
    token = _collected.set(effects)
    try:
        return await database_sync_to_async(fn)(*args, **kwargs)
    finally:
        _collected.reset(token)
        await deliver(effects)


def _committed(effect: Effect) -> None:
    collected = _collected.get()
    if collected is not None:
        collected.append(effect)
        return
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
        if loop is not None and not loop.is_running():
            loop = None
    if loop is None:
        async_to_sync(deliver)([effect])
    else:  # never block the server's database thread on Redis: the loop's pipeline delivers it
        loop.call_soon_threadsafe(_enqueue, effect)


class _Pipeline:
    """Effects handed over by sync code, delivered one after another in the order they came."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Effect] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def put(self, effect: Effect) -> None:
        self.queue.put_nowait(effect)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._drain(), name="chat-publishing")

    async def _drain(self) -> None:
        while not self.queue.empty():
            batch = [self.queue.get_nowait() for _ in range(self.queue.qsize())]
            try:
                await deliver(batch)
            except Exception:  # a bug in one delivery must not stop the ones after it
                logger.exception("delivering %d effect(s) failed", len(batch))


_pipelines: PerLoop[_Pipeline] = PerLoop(_Pipeline)


def _enqueue(effect: Effect) -> None:
    _pipelines.get().put(effect)


async def deliver(effects: Sequence[Effect]) -> None:
    """Deliver committed effects in order; consecutive event batches are published together."""
    events: list[StoredEvent] = []
    for effect in effects:
        if isinstance(effect, EventsCommitted):
            events.extend(effect.events)
            continue
        if events:
            await bus.publish_events(events)
            events = []
        if isinstance(effect, UserTold):
            await bus.publish_to_user(effect.user_id, effect.message)
        elif isinstance(effect, EventsScrubbed):
            await forget_buffered(effect.conversation_id, effect.seqs)
        elif isinstance(effect, NotificationCommitted):
            await bus.publish_notification(
                effect.user_id, effect.seq, effect.frame, max_events=effect.max_events, max_age_s=effect.max_age_s
            )
        else:
            await _ring_runner(effect.run_id)
    if events:
        await bus.publish_events(events)


# In embedded mode and in tests the runs execute in the server process itself: its run supervisor
# registers here (a hook, so that this floor never imports the agent runner above it).
_local_runner: Callable[[], LocalRunner] | None = None


def set_local_runner(factory: Callable[[], LocalRunner] | None) -> None:
    global _local_runner
    _local_runner = factory


async def _ring_runner(run_id: str | None) -> None:
    if settings.AGENT_RUNNER != "inprocess":
        await bus.ring_runner(run_id)
    elif _local_runner is not None:
        runner = _local_runner()
        if run_id is None:
            runner.wake()
        else:
            runner.cancel(run_id)


async def announce(message: EphemeralDoorbell) -> bool:
    """An ephemeral frame to the conversation's sockets on every process. False when the channel
    layer could not take it (the caller then serves its own process's sockets): a lost typing or
    presence frame is corrected by the next one, so this never raises for it."""
    try:
        await bus.announce(message)
    except Exception as exc:
        logger.info("ephemeral frame for %s not published: %r", message["conversation"], exc)
        return False
    return True


async def probe() -> None:
    """Readiness: raise unless the channel layer takes a publish now."""
    await bus.probe()
