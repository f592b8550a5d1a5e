"""Doorbells on the channel layer, rung after commit.

The channel layer is a doorbell, not a mailbox: a lost doorbell costs latency,
never data, because every receiver checks `seq` continuity and reads gaps from the log. Small
frames ride in the doorbell so the common case needs no read at all; larger ones are fetched.

Publishing never fails the command that committed the events: the events are durable already.
When Redis is down (or slow, or its circuit is open) the events wait in this process's
`Republisher` and are published again in the background with capped exponential backoff, so the
other processes' sockets get them live once Redis is back, with nobody doing anything. That is
safe because publishing is idempotent: the buffer is keyed by seq, and hubs and outboxes drop a
doorbell for a seq they have already handed on. (Meanwhile the hubs find the events in the log,
see Hub.resync, so a long outage delays messages by seconds, not until Redis returns.)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from channels.layers import get_channel_layer

from chat.errors import ErrorClass
from chat.infra.doorbells import (
    AGENT_RUNS_CHANNEL,
    EphemeralDoorbell,
    EventDoorbell,
    RunDoorbell,
    UserDoorbell,
    UserMessage,
    conversation_group,
    user_group,
)
from chat.infra.error_recovery import backoff_delay, classify
from chat.infra.message_buffer import conversation_stream, get_buffer, user_stream
from chat.infra.per_loop import PerLoop
from chat.infra.redis_client import redis_breaker, redis_call
from chat.wire.frames import StoredEvent
from monitoring.metrics import metrics

logger = logging.getLogger(__name__)

# Frames above this ride the log, not the doorbell: pub/sub payloads stay small.
DOORBELL_INLINE_MAX = 16 * 1024
# A publish (buffer append or doorbell) that takes longer than this is given up and retried later.
PUBLISH_TIMEOUT_S = 1.0
# Background republishing: full-jitter exponential backoff from 0.2 s, capped at 3 s, and never
# sooner than the redis circuit's own retry time. At most this many events (and user control
# messages) wait per process; beyond that the oldest are dropped: they are in the log, and
# receivers fill the gap at the next event or the next resync.
REPUBLISH_BASE_DELAY_S = 0.2
REPUBLISH_MAX_DELAY_S = 3.0
REPUBLISH_MAX_EVENTS = 10_000
REPUBLISH_MAX_USER_MESSAGES = 1_000

# User control messages worth publishing late: both are idempotent (closing a closed socket, or
# revoking a subscription that is gone, does nothing). Notifications are not retried: they are
# stored, and a client gets any it missed from `sync_notifications`.
RETRIED_USER_ACTIONS = frozenset({"close", "revoke"})


def _transient(exc: BaseException) -> bool:
    return classify(exc) is ErrorClass.TRANSIENT


async def publish_events(events: Sequence[StoredEvent]) -> None:
    """Buffer, then ring. The buffer is written first so that a receiver whose doorbell shows a
    gap finds the missing events there rather than in the log. Never raises for a Redis failure:
    the events are queued for the background republisher instead."""
    if not events:
        return
    try:
        await _publish_now(events)
    except Exception as exc:
        if not _transient(exc):
            metrics.inc("doorbell_failures")
            logger.exception("publishing %d event(s) failed; receivers read them from the log", len(events))
            return
        metrics.inc("publishes_deferred")
        logger.warning("publish deferred (%s: %s); retrying in the background", type(exc).__name__, exc)
        republisher().add_events(events)


async def _publish_now(events: Sequence[StoredEvent]) -> None:
    """Buffer append per stream, then one doorbell per event, in seq order. Raises on the first
    failure (the caller republishes the whole batch: every step is idempotent)."""
    await _append_to_buffer(events)
    layer = get_channel_layer()
    if layer is None:
        return
    for event in events:
        text = event.encoded()
        message: EventDoorbell = {"type": "conv.event", "conversation": event.conversation_id, "seq": event.seq}
        if len(text) <= DOORBELL_INLINE_MAX:
            message["frame"] = text
        send = functools.partial(layer.group_send, conversation_group(event.conversation_id), message)
        try:
            await redis_call(send, timeout_s=PUBLISH_TIMEOUT_S)
        except Exception:
            metrics.inc("doorbell_failures")
            raise


async def _append_to_buffer(events: Sequence[StoredEvent]) -> None:
    by_stream: dict[str, list[tuple[int, str]]] = {}
    for event in events:
        by_stream.setdefault(conversation_stream(event.conversation_id), []).append((event.seq, event.encoded()))
    buffer = get_buffer()
    for stream, entries in by_stream.items():
        try:
            await redis_call(functools.partial(buffer.append, stream, entries), timeout_s=PUBLISH_TIMEOUT_S)
        except Exception:
            metrics.inc("buffer_errors")
            raise


async def publish_notification(
    user_id: int, seq: int, frame: str, *, max_events: int | None = None, max_age_s: float | None = None
) -> None:
    """A stored notification: into the user's hot buffer (bounded by their tier), then to every
    socket of the user."""
    buffer = get_buffer()
    try:
        append = functools.partial(
            buffer.append, user_stream(user_id), [(seq, frame)], max_events=max_events, max_age_s=max_age_s
        )
        await redis_call(append, timeout_s=PUBLISH_TIMEOUT_S)
    except Exception as exc:  # the database has it; sync_notifications reads it from there instead
        metrics.inc("buffer_errors")
        logger.warning("buffer append failed for user %s: %r", user_id, exc, exc_info=not _transient(exc))
    await publish_to_user(user_id, {"action": "notification", "frame": frame})


async def publish_to_user(user_id: int, message: UserMessage) -> None:
    """Control or notification message for every socket of one user, on every server process.
    A `close` or `revoke` that cannot be published now is published again in the background."""
    try:
        await _publish_user_now(user_id, message)
    except Exception as exc:
        metrics.inc("doorbell_failures")
        if _transient(exc) and message.get("action") in RETRIED_USER_ACTIONS:
            logger.warning("user message for %s deferred (%s)", user_id, type(exc).__name__)
            republisher().add_user_message(user_id, message)
        else:
            logger.warning("user doorbell for %s not delivered: %r", user_id, exc, exc_info=not _transient(exc))


async def _publish_user_now(user_id: int, message: UserMessage) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    payload: UserDoorbell = {"type": "user.event", "user": user_id, **message}
    await redis_call(functools.partial(layer.group_send, user_group(user_id), payload), timeout_s=PUBLISH_TIMEOUT_S)


PublishEvents = Callable[[Sequence[StoredEvent]], Awaitable[None]]
PublishUser = Callable[[int, UserMessage], Awaitable[None]]


class Republisher:
    """What this process could not publish, published again once Redis takes it.

    One background task per process (per event loop) drains the queue while it is not empty:
    per conversation in seq order, oldest conversation first. Bounded: the oldest entries are
    dropped beyond the limits (they are durable; receivers fill from the log)."""

    def __init__(
        self,
        publish_events: PublishEvents = _publish_now,
        publish_user: PublishUser = _publish_user_now,
        *,
        max_events: int = REPUBLISH_MAX_EVENTS,
        max_user_messages: int = REPUBLISH_MAX_USER_MESSAGES,
        base_delay_s: float = REPUBLISH_BASE_DELAY_S,
        max_delay_s: float = REPUBLISH_MAX_DELAY_S,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._publish_events = publish_events
        self._publish_user = publish_user
        self.max_events = max_events
        self.max_user_messages = max_user_messages
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._sleep = sleep
        self._rng = rng
        # (conversation, seq) -> event: a seq queued twice is published once.
        self.events: OrderedDict[tuple[str, int], StoredEvent] = OrderedDict()
        self.user_messages: deque[tuple[int, UserMessage]] = deque()
        self._task: asyncio.Task[None] | None = None

    def pending(self) -> int:
        return len(self.events) + len(self.user_messages)

    def add_events(self, events: Sequence[StoredEvent]) -> None:
        for event in events:
            self.events[(event.conversation_id, event.seq)] = event
        while len(self.events) > self.max_events:
            self.events.popitem(last=False)
            metrics.inc("republish_dropped")
        self._ensure_running()

    def add_user_message(self, user_id: int, message: UserMessage) -> None:
        self.user_messages.append((user_id, message))
        while len(self.user_messages) > self.max_user_messages:
            self.user_messages.popleft()
            metrics.inc("republish_dropped")
        self._ensure_running()

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="chat-republisher")

    async def _run(self) -> None:
        attempt = 0
        while self.pending():
            delay = backoff_delay(attempt, base_delay_s=self.base_delay_s, max_delay_s=self.max_delay_s, rng=self._rng)
            # While the circuit is open every call would be refused: wait until it lets a probe by.
            await self._sleep(max(delay, redis_breaker().retry_after_ms() / 1000))
            try:
                await self.flush()
            except Exception as exc:
                attempt += 1
                metrics.inc("republish_failures")
                logger.debug("republish failed (%s); %d pending", type(exc).__name__, self.pending())
            else:
                attempt = 0

    async def flush(self) -> None:
        """Publish everything queued; raise on the first transient failure (the rest stays queued).
        Anything failing for another reason (a bug) is logged and dropped: retrying cannot help."""
        while self.events:
            conversation_id = next(iter(self.events))[0]
            keys = sorted((k for k in self.events if k[0] == conversation_id), key=lambda k: k[1])
            batch = [self.events[k] for k in keys]
            try:
                await self._publish_events(batch)
            except Exception as exc:
                if _transient(exc):
                    raise
                logger.exception("republishing %s dropped", conversation_id)
            else:
                metrics.inc("republished_events", len(batch))
            for key in keys:
                self.events.pop(key, None)
        while self.user_messages:
            user_id, message = self.user_messages[0]
            try:
                await self._publish_user(user_id, message)
            except Exception as exc:
                if _transient(exc):
                    raise
                logger.exception("republishing a message for user %s dropped", user_id)
            self.user_messages.popleft()


_republishers: PerLoop[Republisher] = PerLoop(lambda: Republisher())


def republisher() -> Republisher:
    """The running event loop's republisher (one per server process, one in the worker)."""
    return _republishers.get()


async def announce(message: EphemeralDoorbell) -> None:
    """An ephemeral frame to every process's sockets of a conversation. Raises when the channel
    layer cannot take it now: the caller hands it to its own process's sockets instead."""
    layer = get_channel_layer()
    await redis_call(functools.partial(layer.group_send, conversation_group(message["conversation"]), message))


async def ring_runner(run_id: str | None = None) -> None:
    """To the agent worker: a run was queued or a conversation's run ended (`run_id` None: look at
    the queue), or a running run was flagged for cancellation (`run_id`: stop it). Best effort,
    never raises: the runners poll the queue and see the cancel flag at their heartbeat anyway."""
    message: RunDoorbell = {"type": "run.wake"} if run_id is None else {"type": "run.cancel", "run_id": run_id}
    try:  # bounded: a hung Redis must not delay the command that queued the run
        await redis_call(functools.partial(get_channel_layer().send, AGENT_RUNS_CHANNEL, message))
    except Exception as exc:
        logger.debug("run doorbell not rung (%s); the runners poll", type(exc).__name__)


async def probe() -> None:
    """Raise unless the channel layer takes a publish now. A publish to a group exercises the
    layer's connection and leaves no state behind (a probe channel would stay subscribed, or break
    once a timed-out receive unsubscribed it)."""
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    await layer.group_send("readyz", {"type": "readyz.ping"})
