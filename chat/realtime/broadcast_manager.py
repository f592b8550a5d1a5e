"""One channel-layer subscriber per server process (per event loop), shared by all its sockets.

Fan-out cost must not grow with receivers on the channel layer: a conversation with 200 local
sockets costs one `group_add` and one pub/sub delivery per event in this process, then 200 cheap
in-memory queue puts of the same pre-encoded text. Each socket's `Outbox` orders and gap-fills.
That text is a compression_handler.Frame: the sockets that negotiated compression share its one
compressed form, so compression too costs once per broadcast, not once per receiver.

Redis failing never fails a subscription: a group the hub cannot join now is joined in the
background once Redis answers again, and meanwhile (and once after any Redis trouble) the resync
compares its conversations against the log instead of the buffer, so local sockets keep getting
every event, a resync interval late at worst.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from channels.layers import get_channel_layer

from chat.errors import ErrorClass
from chat.infra.doorbells import EphemeralDoorbell, conversation_group, user_group
from chat.infra.error_recovery import classify
from chat.infra.message_buffer import Buffer, conversation_stream, get_buffer
from chat.infra.per_loop import PerLoop
from chat.infra.redis_client import redis_call
from chat.realtime import telemetry
from chat.realtime.compression_handler import shared
from chat.realtime.groups import GroupMembership
from chat.realtime.reconnection_handler import load_events, log_heads
from monitoring.metrics import metrics
from monitoring.metrics.meter import meter

logger = logging.getLogger(__name__)

# Recent encoded events kept per conversation in this process, so a socket that lost a doorbell or
# subscribes a little behind is served without a database read. 256 covers several seconds of a
# busy room; older gaps go to the log.
RECENT_PER_CONVERSATION = 256
# The encoded start of an event that rewrote an earlier one's stored data (message_deleted scrubs the
# message's text, chat/services/message_actions.py). Frames are encoded with `type` first.
SCRUBS_EARLIER = '{"type":"message_deleted"'
# A doorbell that arrives ahead of its predecessor waits this long for it before the hub reads
# the missing events from the log. Several processes publishing to one conversation reorder
# doorbells by a few milliseconds; 50 ms absorbs that without a read and costs little latency.
REORDER_WAIT_S = 0.05

# Every this many seconds a hub compares each local conversation's newest buffered seq with what
# it has delivered, and fills the difference. A lost doorbell followed by silence (the last
# event of a burst, or one published while Redis restarted) is then late by at most this much.
RESYNC_INTERVAL_S = 2.0


def _transient(exc: BaseException) -> bool:
    return classify(exc) is ErrorClass.TRANSIENT


LoadEvents = Callable[[str, int, int], Awaitable[list[tuple[int, str]]]]
LoadHeads = Callable[[list[str]], Awaitable[list[int]]]


class Sink(Protocol):
    def deliver_event(self, conversation_id: str, seq: int, text: str | None) -> None: ...
    def deliver_user(self, message: Mapping[str, Any]) -> None: ...
    def send_frame(self, text: str) -> None: ...


class Hub(GroupMembership):
    def __init__(
        self,
        layer: Any = None,
        load: LoadEvents = load_events,
        buffer: Buffer | None = None,
        heads_from_log: LoadHeads = log_heads,
    ) -> None:
        self.layer = layer if layer is not None else get_channel_layer()
        self._load = load
        self._buffer = buffer
        self._log_heads = heads_from_log
        # Per conversation: the next seq to hand to sockets, doorbells that came early, and the
        # task that waits for (or reads) the missing ones. Sockets thus get events in order and a
        # gap costs one log read per process, not one per socket.
        self.next_seq: dict[str, int] = {}
        self.early: dict[str, dict[int, str | None]] = {}
        self._gap_tasks: dict[str, asyncio.Task[None]] = {}
        self.channel: str | None = None
        self.conversations: dict[str, set[Sink]] = {}
        self.users: dict[int, set[Sink]] = {}
        self.recent: dict[str, OrderedDict[int, str]] = {}
        self.last_seen: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        # Set once this process's group_add for a conversation/user has completed (or failed): a
        # second socket joining meanwhile waits for it instead of assuming the subscription is live.
        self._ready: dict[str, asyncio.Event] = {}
        # Groups wanted but not joined on the channel layer (Redis was down): the rejoin task adds
        # them when it can; until then the resync reads their heads from the log.
        self.pending_groups: set[str] = set()
        self._rejoin_task: asyncio.Task[None] | None = None
        # The buffer's dataset id when last read, and whether the next resync must check the log
        # (Redis failed or came back empty: the buffer cannot show what was missed meanwhile).
        self._buffer_epoch: str | None = None
        self.check_log_next = False

    async def _ensure_started(self) -> str:
        """The hub's channel, created on first use. Raises if the channel layer cannot make one
        now; the resync runs from the start regardless, so local sockets are served from the log."""
        async with self._start_lock:
            if self._resync_task is None:
                self._resync_task = asyncio.create_task(self._resync_loop(), name="chat-hub-resync")
                telemetry.ensure_started("server", self)
            if self.channel is not None:
                return self.channel
            channel: str = await redis_call(functools.partial(self.layer.new_channel, "hub."))
            self.channel = channel
            self._task = asyncio.create_task(self._run(), name="chat-hub")
            return channel

    async def _run(self) -> None:
        assert self.channel is not None
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("hub receive failed; retrying")
                metrics.inc("hub_receive_errors")
                await asyncio.sleep(0.5)
                continue
            try:
                self.dispatch(message)
            except Exception:  # one bad message must not stop the process's fan-out
                logger.exception("hub dispatch failed")

    def dispatch(self, message: Mapping[str, Any]) -> None:
        kind = message.get("type")
        if kind == "conv.event":
            conversation_id, seq, text = message["conversation"], int(message["seq"]), shared(message.get("frame"))
            if text is not None and conversation_id in self.conversations:
                self.remember(conversation_id, seq, text)
            self.arrive(conversation_id, seq, text)
            metrics.inc("hub_events")
        elif kind == "conv.ephemeral":
            exclude = message.get("exclude_session")
            frame = shared(message["frame"])
            for sink in tuple(self.conversations.get(message["conversation"], ())):
                if getattr(sink, "session_id", None) != exclude:
                    sink.send_frame(frame)
        elif kind == "user.event":
            for sink in tuple(self.users.get(int(message["user"]), ())):
                sink.deliver_user(message)

    def arrive(self, conversation_id: str, seq: int, text: str | None) -> None:
        """Hand events to local sockets in seq order, holding early ones until the gap closes."""
        if conversation_id not in self.conversations:
            return
        expected = self.next_seq.setdefault(conversation_id, seq)
        if seq < expected:
            metrics.inc("hub_late_doorbells")
            return
        if seq > expected:
            self.early.setdefault(conversation_id, {})[seq] = text
            if conversation_id not in self._gap_tasks:
                self._gap_tasks[conversation_id] = asyncio.create_task(self._close_gap(conversation_id))
            return
        self._fan_out(conversation_id, seq, text)
        self._drain_early(conversation_id)

    def _fan_out(self, conversation_id: str, seq: int, text: str | None) -> None:
        self.next_seq[conversation_id] = seq + 1
        self.last_seen[conversation_id] = seq
        started = time.perf_counter()
        for sink in tuple(self.conversations.get(conversation_id, ())):
            sink.deliver_event(conversation_id, seq, text)
        meter.broadcast(time.perf_counter() - started)  # chat_broadcast_duration_seconds, batched

    def _drain_early(self, conversation_id: str) -> None:
        early = self.early.get(conversation_id)
        while early and self.next_seq[conversation_id] in early:
            seq = self.next_seq[conversation_id]
            self._fan_out(conversation_id, seq, early.pop(seq))
        if not early:
            self.early.pop(conversation_id, None)
            task = self._gap_tasks.pop(conversation_id, None)
            if task is not None and task is not asyncio.current_task():
                task.cancel()

    async def _close_gap(self, conversation_id: str) -> None:
        try:
            await asyncio.sleep(REORDER_WAIT_S)
            early = self.early.get(conversation_id)
            if not early or conversation_id not in self.next_seq:
                return
            first_early = min(early)
            metrics.inc("hub_gap_reads")
            try:
                rows = await self._load(conversation_id, self.next_seq[conversation_id] - 1, first_early - 1)
            except Exception as exc:
                # Sockets fill the gap themselves (outbox); the hub just stops waiting.
                logger.warning("hub gap read failed for %s: %r", conversation_id, exc, exc_info=not _transient(exc))
                rows = []
            for seq, text in rows:
                if seq >= self.next_seq.get(conversation_id, seq + 1):
                    self._fan_out(conversation_id, seq, self.remember(conversation_id, seq, text))
            if conversation_id in self.next_seq:
                # Whatever the log lacks below the early doorbell was compacted: skip past it.
                self.next_seq[conversation_id] = max(self.next_seq[conversation_id], first_early)
                self._drain_early(conversation_id)
        finally:
            if self._gap_tasks.get(conversation_id) is asyncio.current_task():
                self._gap_tasks.pop(conversation_id, None)
            if self.early.get(conversation_id) and conversation_id not in self._gap_tasks:
                # Another gap further on (doorbells that arrived during the read): wait for it too.
                self._gap_tasks[conversation_id] = asyncio.create_task(self._close_gap(conversation_id))

    def observe_head(self, conversation_id: str, head_seq: int) -> None:
        """A subscriber read the conversation's head from the database. If no doorbell has come yet,
        expect head_seq + 1 next, so the resync can notice when that first doorbell is lost."""
        if conversation_id in self.conversations:
            self.next_seq.setdefault(conversation_id, head_seq + 1)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_INTERVAL_S)
            try:
                await self.resync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is down too: try again next round
                metrics.inc("hub_resync_errors")
                logger.warning("hub resync failed: %r", exc, exc_info=not _transient(exc))

    async def resync(self) -> int:
        """Deliver what was published but never rang here. Returns events found.

        Normally one pipelined Redis read of the buffer's newest seq per local conversation. The
        log (one PostgreSQL query for all of them) answers instead when the buffer cannot be
        trusted to show what was missed: Redis is failing (doorbells are not arriving either), it
        came back empty (its epoch changed), or it failed since the last resync. Conversations
        whose group is not joined yet are always checked against the log."""
        conversations = [c for c in self.conversations if c in self.next_seq]
        if not conversations:
            # Nothing local to catch up on; a conversation subscribed later starts from the head
            # its subscriber reads from the database.
            self.check_log_next = False
            return 0
        buffer = self._buffer or get_buffer()
        buffered: list[int] = []
        redis_ok = False
        try:
            epoch = await redis_call(buffer.epoch)
            buffered = await redis_call(
                functools.partial(buffer.heads, [conversation_stream(c) for c in conversations])
            )
            redis_ok = True
        except Exception:
            metrics.inc("hub_resync_redis_errors")
            self.check_log_next = True
        else:
            if self._buffer_epoch is not None and epoch != self._buffer_epoch:
                self.check_log_next = True  # Redis restarted empty: what it held before is gone
            self._buffer_epoch = epoch
        heads = buffered
        pending = {c for c in conversations if conversation_group(c) in self.pending_groups}
        if self.check_log_next or pending:
            try:
                from_log = await self._log_heads(conversations)
            except Exception:
                if not redis_ok:
                    raise  # neither Redis nor the database answers: next round
                from_log = None  # the database is down: the buffer's heads will do for now
            if from_log is not None:
                metrics.inc("hub_resyncs_from_log")
                if self.check_log_next:
                    heads = from_log
                    if redis_ok:  # one log check after Redis is healthy again covers what it lost
                        self.check_log_next = False
                else:
                    heads = [
                        log if c in pending else buf
                        for c, log, buf in zip(conversations, from_log, buffered, strict=True)
                    ]
        found = 0
        for conversation_id, head in zip(conversations, heads, strict=True):
            delivered = self.next_seq.get(conversation_id, head + 1) - 1
            if head <= delivered or self.early.get(conversation_id):
                continue  # up to date, or a gap fill is already under way
            metrics.inc("hub_resyncs")
            for seq, text in await self._load(conversation_id, delivered, head):
                self.arrive(conversation_id, seq, self.remember(conversation_id, seq, text))
                found += 1
        return found

    def remember(self, conversation_id: str, seq: int, text: str) -> str:
        """Keep `text` as the recent copy of `seq`; returns it as the shared Frame to fan out."""
        text = shared(text)
        if text.startswith(SCRUBS_EARLIER):
            # An earlier event's data was rewritten (a deleted message's text): the copies kept here
            # must not be replayed; sockets catching up read the log instead.
            self.recent.pop(conversation_id, None)
        recent = self.recent.setdefault(conversation_id, OrderedDict())
        recent[seq] = text
        while len(recent) > RECENT_PER_CONVERSATION:
            recent.popitem(last=False)
        return text

    def recent_text(self, conversation_id: str, seq: int) -> str | None:
        recent = self.recent.get(conversation_id)
        return recent.get(seq) if recent else None

    async def join(self, conversation_id: str, sink: Sink) -> None:
        await self._join(self.conversations, conversation_id, conversation_group(conversation_id), sink)

    async def _join(self, registry: dict[Any, set[Sink]], key: Any, group: str, sink: Sink) -> None:
        sinks = registry.setdefault(key, set())
        first = not sinks
        sinks.add(sink)
        try:
            await self._group_join(group, first)
        except BaseException:
            # Not subscribed after all (cancelled): forget the sink so the next join retries.
            sinks.discard(sink)
            if not sinks:
                registry.pop(key, None)
                self._ready.pop(group, None)
                self.pending_groups.discard(group)
            raise

    async def leave(self, conversation_id: str, sink: Sink) -> None:
        sinks = self.conversations.get(conversation_id)
        if not sinks or sink not in sinks:
            return
        sinks.discard(sink)
        if not sinks:
            del self.conversations[conversation_id]
            self.recent.pop(conversation_id, None)
            self.last_seen.pop(conversation_id, None)
            self.next_seq.pop(conversation_id, None)
            self.early.pop(conversation_id, None)
            gap_task = self._gap_tasks.pop(conversation_id, None)
            if gap_task is not None:
                gap_task.cancel()
            await self._group_leave(conversation_group(conversation_id))

    async def join_user(self, user_id: int, sink: Sink) -> None:
        await self._join(self.users, user_id, user_group(user_id), sink)

    async def leave_user(self, user_id: int, sink: Sink) -> None:
        sinks = self.users.get(user_id)
        if not sinks or sink not in sinks:
            return
        sinks.discard(sink)
        if not sinks:
            del self.users[user_id]
            await self._group_leave(user_group(user_id))

    def deliver_locally(self, message: EphemeralDoorbell) -> None:
        """Hand an ephemeral message to this process's sockets when the channel layer could not
        take it: sockets on other processes miss it, the ones here need not."""
        self.dispatch(message)


_hubs: PerLoop[Hub] = PerLoop(lambda: Hub())


def get_hub() -> Hub:
    """The hub of the running event loop (one per server process in production)."""
    return _hubs.get()


def current_hub() -> Hub | None:
    """The running event loop's hub if one was made (None: no socket ever subscribed here)."""
    return _hubs.current()
