"""What a command handler may see of the socket it serves: `Session`, which the consumer
implements. Handlers type against this instead of importing the consumer, so the commands sit
below the consumer and never reach into its other attributes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from chat.realtime.auth import Identity
from chat.realtime.broadcast_manager import Hub
from chat.realtime.outbox import Outbox
from chat.realtime.throttle import CommandThrottle
from chat.selectors import Access
from chat.tiers import TierLimits


class Session(Protocol):
    session_id: str
    identity: Identity
    limits: TierLimits
    throttle: CommandThrottle
    hub: Hub
    outbox: Outbox
    # Conversations this socket receives, and the access each was granted with (used only while
    # PostgreSQL is unreachable: see `degraded_access`).
    subscriptions: set[str]
    subscription_access: dict[str, Access]

    def user_public(self) -> dict[str, Any]: ...

    def after_reply(self, fn: Callable[[], Any]) -> None:
        """Run `fn` right after the current command's reply is queued (e.g. a subscribe's replay)."""

    def degraded_access(self, fields: dict[str, Any]) -> Access | None:
        """The access a subscription holds, while (and only while) the database cannot be asked."""

    async def drop_subscription(self, conversation_id: str) -> None: ...

    async def refresh_auth(self, token: str) -> dict[str, Any]: ...
