"""Per-user notifications with their own gap-free seq (PROTOCOL §2 user events).

Stored first, then pushed after commit to every socket of the user on every server process; a
socket that missed some asks with `sync_notifications(since_seq)`."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from chat.models import Notification, User
from chat.realtime.protocol import encode
from chat.services.events import rfc3339


def notification_frame(notification: Notification) -> str:
    return encode(
        {
            "type": "notification",
            "seq": notification.seq,
            "ts": rfc3339(notification.created_at),
            "data": notification.data,
        }
    )


@transaction.atomic
def notification_create(*, user_id: int, data: dict[str, Any]) -> Notification:
    """Store a notification (the user row lock orders seqs) and push it once the transaction commits."""
    User.objects.filter(id=user_id).update(notification_seq=F("notification_seq") + 1)
    seq, tier = User.objects.filter(id=user_id).values_list("notification_seq", "tier").get()
    notification = Notification.objects.create(user_id=user_id, seq=seq, data=data, created_at=timezone.now())
    frame = notification_frame(notification)
    transaction.on_commit(lambda: _push(user_id, seq, frame, tier))
    return notification


def _push(user_id: int, seq: int, frame: str, tier: str) -> None:
    from chat.infra.bus import publish_notification
    from chat.tiers import limits_for

    limits = limits_for(tier)
    async_to_sync(publish_notification)(
        user_id, seq, frame, max_events=limits.buffer_max_events, max_age_s=limits.buffer_max_age_s
    )
