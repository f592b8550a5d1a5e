"""The notification list of one user (docs/protocol.md §9): pages of it newest first with `read`,
marking it read up to a seq on every device, and the settings page's test push."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Greatest, Least

from chat.errors import ServiceError
from chat.models import Notification, NotificationSettings, User
from chat.publishing import UserTold, after_commit
from chat.services.notifications import notify
from chat.wire.frames import encode, rfc3339

PAGE_DEFAULT = 50
PAGE_MAX = 100


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    has_more: bool
    unread: int
    read_up_to_seq: int
    head_seq: int

    def json(self) -> dict[str, Any]:
        return {
            "notifications": self.items,
            "has_more": self.has_more,
            "unread": self.unread,
            "read_up_to_seq": self.read_up_to_seq,
            "head_seq": self.head_seq,
        }


def read_seq_of(user_id: int) -> int:
    return NotificationSettings.objects.filter(user_id=user_id).values_list("read_seq", flat=True).first() or 0


def page(*, user_id: int, unread_only: bool, before: int | None, limit: int) -> Page:
    """Up to `limit` notifications with seq < `before` (all when None), newest first; each is the
    frame's `seq`, `ts` and `data` plus `read`."""
    if not 1 <= limit <= PAGE_MAX:
        raise ServiceError("bad_request", f"limit: expected 1 to {PAGE_MAX}")
    if before is not None and before < 1:
        raise ServiceError("bad_request", "before: expected a notification seq ≥ 1")
    read_seq = read_seq_of(user_id)
    head = User.objects.filter(id=user_id).values_list("notification_seq", flat=True).get()
    qs = Notification.objects.filter(user_id=user_id)
    if unread_only:
        qs = qs.filter(seq__gt=read_seq)
    if before is not None:
        qs = qs.filter(seq__lt=before)
    rows = list(qs.order_by("-seq")[: limit + 1])
    items = [
        {"seq": n.seq, "ts": rfc3339(n.created_at), "data": n.data, "read": n.seq <= read_seq} for n in rows[:limit]
    ]
    unread = Notification.objects.filter(user_id=user_id, seq__gt=read_seq).count()
    return Page(items, len(rows) > limit, unread, read_seq, head)


@transaction.atomic
def mark_read(*, user_id: int, up_to_seq: object) -> dict[str, int]:
    """Everything up to `up_to_seq` is read (never moves back, never past the head). Every socket of
    the user, on every device, is told once this commits (a `notifications_read` frame)."""
    if isinstance(up_to_seq, bool) or not isinstance(up_to_seq, int) or up_to_seq < 0:
        raise ServiceError("bad_request", "up_to_seq: expected an integer ≥ 0")
    head = User.objects.filter(id=user_id).values_list("notification_seq", flat=True).get()
    NotificationSettings.objects.get_or_create(user_id=user_id)
    NotificationSettings.objects.filter(user_id=user_id).update(
        read_seq=Greatest(F("read_seq"), Least(up_to_seq, head))
    )
    read_seq = read_seq_of(user_id)
    unread = Notification.objects.filter(user_id=user_id, seq__gt=read_seq).count()
    frame = encode({"type": "notifications_read", "data": {"up_to_seq": read_seq, "unread": unread}})
    after_commit(UserTold(user_id, {"action": "notification", "frame": frame}))
    return {"read_up_to_seq": read_seq, "unread": unread}


def push_test(*, user_id: int) -> Notification:
    """The settings page's "test push": a `test` notification that goes to the list and to every
    device at once (urgent: quiet hours do not hold it), through the same worker as any other."""
    created = notify(
        user_ids=[user_id],
        kind="test",
        conversation_id=None,
        seq=None,
        actor=None,
        preview="Push notifications work on this device.",
    )
    return created[0]
