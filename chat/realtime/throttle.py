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
from typing import Any

from django.conf import settings

from chat.errors import ProtocolError
from chat.infra import rate_limiter
from chat.infra.rate_limiter import Decision, Limiter, Window
from chat.tiers import COMMAND_CLASSES, Rate, TierLimits
from monitoring.metrics import metrics

# Rate classes whose commands are dropped, not refused, over their limit: a lost `typing` is
# corrected by the next one, so it must never cost the client an error frame (or a 4400 close).
BEST_EFFORT = frozenset({"typing"})
# What each limit is, in the words of its refusal ("{n} messages per 10 s").
_WHAT = {
    "messages": ("sending too fast", "messages"),
    "agent_runs": ("agent-run quota reached", "runs"),
    "typing": ("typing too fast", "typing frames"),
    "commands": ("too many commands", "commands"),
}


def _window(rate: Rate) -> str:
    seconds = rate.window_s
    named = {60: "minute", 3600: "hour", 86400: "day"}
    return named[int(seconds)] if seconds in named else f"{seconds:g} s"


def wait_text(ms: int) -> str:
    """A wait for people, rounded up so that waiting that long is enough: 2 s, 3 min, 2 h 5 min."""
    seconds = max(1, -(-ms // 1000))
    if seconds < 60:
        return f"{seconds} s"
    minutes = -(-seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min" if rest else f"{hours} h"


class RateLimited(ProtocolError):
    """`rate_limited`, naming the limit that refused: its numbers, the tier for a quota, the real wait."""

    def __init__(self, rate_class: str, retry_after_ms: int, rate: Rate | None = None, tier: str = "") -> None:
        reason, unit = _WHAT.get(rate_class, (f"too many {rate_class.replace('_', ' ')}", rate_class))
        limit = f": {rate.limit} {unit} per {_window(rate)}" if rate is not None else ""
        on_tier = f" on the {tier} tier" if tier and rate_class == "agent_runs" else ""
        super().__init__(
            "rate_limited", f"{reason}{limit}{on_tier}; retry in {wait_text(retry_after_ms)}", retry_after_ms
        )
        self.rate_class = rate_class

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "limit": self.rate_class}


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

    async def admit(self, command_type: str) -> bool:
        """Admit a command of this type (True), or raise RateLimited (nothing recorded). A command of
        a best-effort class (typing) over its limit is not refused but dropped: False, counted in
        chat_rate_limited_total like a refusal, and it never counts as hammering."""
        rate_class = COMMAND_CLASSES.get(command_type, "commands")
        if rate_class in BEST_EFFORT:
            decision = await self.limiter.hit([self.window(rate_class)])
            if not decision.allowed:
                metrics.inc("rate_limited", cls=rate_class)
            return decision.allowed
        await self._admit([rate_class], [self.window(rate_class)])
        return True

    async def admit_run(self) -> None:
        """An agent run started without a message (`regenerate`): one "agent_runs" slot."""
        await self._admit(["agent_runs"], [self.window("agent_runs")])

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
        raise RateLimited(refused, decision.retry_after_ms, self.limits.rate(refused), self.limits.name)

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
