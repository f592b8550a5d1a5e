"""Per-socket admission of commands against the user's tier rates (chat/tiers.py, chat/infra/rate_limiter.py).

The windows are per user, not per socket: five tabs share one budget, on whichever server process
each tab landed. The socket-local part is only the hammering count: a client that keeps sending
commands before the `retry_after_ms` it was given has passed is closed with 4400 (the consumer
decides; this says when).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from django.conf import settings

from chat.errors import ProtocolError
from chat.infra import rate_limiter
from chat.infra.rate_limiter import Decision, Limiter, Window
from chat.tiers import COMMAND_CLASSES, TierLimits
from monitoring.metrics import metrics


class RateLimited(ProtocolError):
    def __init__(self, rate_class: str, retry_after_ms: int) -> None:
        super().__init__(
            "rate_limited", f"too many {rate_class.replace('_', ' ')}; retry in {retry_after_ms} ms", retry_after_ms
        )
        self.rate_class = rate_class


class CommandThrottle:
    def __init__(
        self,
        user_id: int,
        limits: TierLimits,
        *,
        limiter: Limiter | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.user_id = user_id
        self.limits = limits
        self.limiter = limiter or rate_limiter.get_limiter()
        self.clock = clock or getattr(self.limiter, "clock", None) or time.time
        # Per rate class: the latest retry deadline this socket was given, and how many commands
        # of that class it sent before that deadline (since the class last admitted one).
        self._told_until_ms: dict[str, int] = {}
        self._hammering: dict[str, int] = {}

    def window(self, rate_class: str) -> Window:
        rate = self.limits.rate(rate_class)
        return Window(rate_limiter.key(rate_class, self.user_id), rate.limit, rate.window_ms)

    async def admit(self, command_type: str) -> None:
        """Admit a command of this type, or raise RateLimited (nothing recorded)."""
        rate_class = COMMAND_CLASSES.get(command_type, "commands")
        await self._admit([rate_class], [self.window(rate_class)])

    async def admit_send(self, *, starts_run: bool) -> None:
        """A `send` takes a "messages" slot and, when it will start an agent run, an "agent_runs"
        slot as well — both or neither."""
        classes = ["messages", "agent_runs"] if starts_run else ["messages"]
        await self._admit(classes, [self.window(c) for c in classes])

    async def _admit(self, classes: list[str], windows: list[Window]) -> None:
        decision: Decision = await self.limiter.hit(windows)
        key = classes[0]
        if decision.allowed:
            self._hammering.pop(key, None)
            return
        now_ms = int(self.clock() * 1000)
        if now_ms < self._told_until_ms.get(key, 0):
            self._hammering[key] = self._hammering.get(key, 0) + 1
        else:
            self._hammering.pop(key, None)  # it waited as told (another tab may have used the budget)
        self._told_until_ms[key] = max(self._told_until_ms.get(key, 0), now_ms + decision.retry_after_ms)
        refused = classes[decision.refused] if 0 <= decision.refused < len(classes) else classes[0]
        metrics.inc("rate_limited", cls=refused)
        raise RateLimited(refused, decision.retry_after_ms)

    @property
    def hammering(self) -> int:
        """The most commands of one class sent while told to wait."""
        return max(self._hammering.values(), default=0)

    @property
    def over_hammer_limit(self) -> bool:
        return self.hammering > settings.CHAT_RATE_HAMMER_LIMIT


class BadFrames:
    """Malformed frames one socket sent within the last CHAT_ABUSE_WINDOW_S seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.times: deque[float] = deque()

    def add(self) -> int:
        now = self.clock()
        self.times.append(now)
        while self.times and self.times[0] < now - settings.CHAT_ABUSE_WINDOW_S:
            self.times.popleft()
        return len(self.times)


def abuse_verdict(exc: ProtocolError, throttle: CommandThrottle | None, bad_frames: BadFrames) -> str | None:
    """Why the socket that caused `exc` must be closed 4400 now, or None to keep it open.
    `throttle` is None before the socket authenticated (nothing is rate limited then)."""
    if isinstance(exc, RateLimited) and throttle is not None:
        # Told to wait and still sending: a broken retry loop or a flood; either way, close it.
        return "rate_limit" if throttle.over_hammer_limit else None
    if exc.code not in ("bad_request", "unknown_command", "too_large"):
        return None
    return "bad_frames" if bad_frames.add() > settings.CHAT_ABUSE_LIMIT else None
