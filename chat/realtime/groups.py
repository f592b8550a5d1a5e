"""The broadcast manager's membership of channel-layer groups: joining a conversation's or a
user's group when its first local socket subscribes, leaving it with the last, and while Redis is
down, remembering the groups it could not join and joining them in the background (meanwhile the
hub's resync serves those sockets from the log)."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from typing import Any

from chat.errors import ErrorClass
from chat.infra.error_recovery import backoff_delay, classify
from chat.infra.redis_client import redis_call
from monitoring.metrics import metrics

logger = logging.getLogger(__name__)

# Joining a group again after Redis failed: full-jitter backoff from 0.25 s, capped at 3 s.
REJOIN_BASE_DELAY_S = 0.25
REJOIN_MAX_DELAY_S = 3.0


class GroupMembership:
    """Mixed into the Hub, which owns the state these methods keep: the layer and the hub's
    channel, the local registries, `pending_groups`, `_ready` and `check_log_next`."""

    layer: Any
    channel: str | None
    conversations: dict[str, Any]
    users: dict[int, Any]
    pending_groups: set[str]
    check_log_next: bool
    _ready: dict[str, asyncio.Event]
    _rejoin_task: asyncio.Task[None] | None

    async def _ensure_started(self) -> str:
        raise NotImplementedError

    async def _group_join(self, group: str, first: bool) -> None:
        if first:
            ready = self._ready[group] = asyncio.Event()
            try:
                await self._group_add(group)
            except Exception as exc:
                # Redis is down or slow: serve the group's sockets from the log meanwhile (resync)
                # and join in the background; the subscription itself stands.
                metrics.inc("hub_group_join_deferred")
                logger.warning("joining %s deferred: %s", group, type(exc).__name__)
                self.pending_groups.add(group)
                self.check_log_next = True
                self._ensure_rejoining()
            finally:
                ready.set()
        else:
            pending = self._ready.get(group)
            if pending is not None:
                await pending.wait()

    async def _group_add(self, group: str) -> None:
        channel = await self._ensure_started()
        await redis_call(functools.partial(self.layer.group_add, group, channel))

    def _ensure_rejoining(self) -> None:
        if self._rejoin_task is None or self._rejoin_task.done():
            self._rejoin_task = asyncio.create_task(self._rejoin_loop(), name="chat-hub-rejoin")

    async def _rejoin_loop(self) -> None:
        attempt = 0
        while self.pending_groups:
            await asyncio.sleep(
                backoff_delay(
                    attempt, base_delay_s=REJOIN_BASE_DELAY_S, max_delay_s=REJOIN_MAX_DELAY_S, rng=random.random
                )
            )
            try:
                for group in sorted(self.pending_groups):
                    if group not in self.pending_groups:  # left meanwhile
                        continue
                    await self._group_add(group)
                    self.pending_groups.discard(group)
                    metrics.inc("hub_group_rejoins")
                    if not self._wanted(group):  # its last socket left while we were joining
                        await redis_call(functools.partial(self.layer.group_discard, group, self.channel))
            except asyncio.CancelledError:
                raise
            except Exception:
                attempt += 1
                continue
            attempt = 0
            # Doorbells rung before the join never reached us: the next resync checks the log.
            self.check_log_next = True

    def _wanted(self, group: str) -> bool:
        kind, _, key = group.partition(".")
        return key in self.conversations if kind == "conv" else key.isdigit() and int(key) in self.users

    async def _group_leave(self, group: str) -> None:
        self._ready.pop(group, None)
        if group in self.pending_groups:
            self.pending_groups.discard(group)  # never joined: nothing to discard
            return
        if self.channel is not None:
            try:
                await redis_call(functools.partial(self.layer.group_discard, group, self.channel))
            except Exception as exc:
                # Still subscribed on Redis: doorbells for the group arrive and are ignored (no
                # local sockets), and a later join finds the subscription in place.
                logger.warning(
                    "group_discard failed for %s: %r", group, exc, exc_info=classify(exc) is not ErrorClass.TRANSIENT
                )
