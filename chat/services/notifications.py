"""Per-user notifications with their own gap-free seq (docs/protocol.md §2 user events).

Stored first, then pushed after commit to every socket of the user on every server process; a
socket that missed some asks with `sync_notifications(since_seq)`."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from chat.models import Notification, User
from chat.publishing import NotificationCommitted, after_commit
from chat.tiers import limits_for
from chat.wire.frames import notification_frame


@transaction.atomic
def notification_create(*, user_id: int, data: dict[str, Any]) -> Notification:
    """Store a notification (the user row lock orders seqs) and push it once the transaction commits."""
    User.objects.filter(id=user_id).update(notification_seq=F("notification_seq") + 1)
    seq, tier = User.objects.filter(id=user_id).values_list("notification_seq", "tier").get()
    notification = Notification.objects.create(user_id=user_id, seq=seq, data=data, created_at=timezone.now())
    limits = limits_for(tier)  # the user's hot buffer of notifications follows their tier
    frame = notification_frame(seq, notification.created_at, data)
    after_commit(NotificationCommitted(user_id, seq, frame, limits.buffer_max_events, limits.buffer_max_age_s))
    return notification
