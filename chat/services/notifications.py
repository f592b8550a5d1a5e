"""Per-user notifications with their own gap-free seq (PROTOCOL §2 user events)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from chat.models import Notification, User


@transaction.atomic
def notification_create(*, user_id: int, data: dict[str, Any]) -> Notification:
    User.objects.filter(id=user_id).update(notification_seq=F("notification_seq") + 1)
    seq = User.objects.filter(id=user_id).values_list("notification_seq", flat=True).get()
    return Notification.objects.create(user_id=user_id, seq=seq, data=data, created_at=timezone.now())
