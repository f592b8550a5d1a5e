"""The email digest (docs/protocol.md §9): at most one email per user per `digest_period_s`, listing
the notifications marked for email that stayed unread for at least `digest_grace_s` (what arrived
while the user was away). Quiet hours and `muted_until` hold a digest back unless one of its
notifications is urgent. A failed send is retried with backoff, and after `digest_max_attempts`
the user's waiting notifications are given up (counted, not mailed later in a pile).
Sent through Django's email backend by the notifications worker, off the request path.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import transaction

from chat.models import Notification, NotificationSettings, User
from chat.services.notification_config import option
from chat.services.notification_prefs import held_until
from chat.services.push import backoff_s
from monitoring.metrics import metrics

logger = logging.getLogger(__name__)

Delivery = Notification.Delivery


def send_digests(*, now: datetime) -> int:
    """Send every digest that is due now; returns how many went out."""
    grace = timedelta(seconds=float(option("digest_grace_s")))
    waiting = (
        Notification.objects.filter(email_state=Delivery.PENDING, created_at__lte=now - grace)
        .order_by()  # not the model's (user, seq): DISTINCT would then be per row, not per user
        .values_list("user_id", flat=True)
        .distinct()
    )
    sent = 0
    for user_id in list(waiting[: int(option("batch"))]):
        try:
            sent += _digest_for(user_id, now)
        except Exception:  # one user's failure (a bug, a bad address) must not stop the others
            logger.exception("digest for user %s failed", user_id)
    return sent


def _digest_for(user_id: int, now: datetime) -> int:
    period = timedelta(seconds=float(option("digest_period_s")))
    grace = timedelta(seconds=float(option("digest_grace_s")))
    with transaction.atomic():
        row, _ = NotificationSettings.objects.select_for_update().get_or_create(user_id=user_id)
        if row.digest_sent_at is not None and now < row.digest_sent_at + period:
            return 0  # one per period
        if row.digest_retry_at is not None and now < row.digest_retry_at:
            return 0
        pending = Notification.objects.filter(user_id=user_id, email_state=Delivery.PENDING, created_at__lte=now)
        Notification.objects.filter(id__in=pending.filter(seq__lte=row.read_seq).values("id")).update(
            email_state=Delivery.SKIPPED  # read on some device: nothing to tell by email
        )
        notes = list(
            pending.filter(seq__gt=row.read_seq, created_at__lte=now - grace).order_by("seq")[
                : int(option("digest_max_items"))
            ]
        )
        if not notes:
            return 0
        if held_until(row, now) is not None and not any(n.priority == "urgent" for n in notes):
            return 0  # quiet hours or muted: the next pass after they end sends it
        email = User.objects.filter(id=user_id).values_list("email", flat=True).get()
        if not email:
            Notification.objects.filter(id__in=[n.id for n in notes]).update(email_state=Delivery.SKIPPED)
            return 0
        try:
            _message(email, notes).send()
        except Exception as exc:
            return _failed(row, notes, now, exc)
        Notification.objects.filter(id__in=[n.id for n in notes]).update(email_state=Delivery.DONE)
        row.digest_sent_at, row.digest_failures, row.digest_retry_at = now, 0, None
        row.save(update_fields=["digest_sent_at", "digest_failures", "digest_retry_at"])
    metrics.inc("notification_email", outcome="sent")
    return 1


def _failed(row: NotificationSettings, notes: list[Notification], now: datetime, exc: Exception) -> int:
    row.digest_failures += 1
    if row.digest_failures >= int(option("digest_max_attempts")):
        logger.warning("digest for user %s failed %d times (%s); given up", row.user_id, row.digest_failures, exc)
        Notification.objects.filter(id__in=[n.id for n in notes]).update(email_state=Delivery.SKIPPED)
        row.digest_failures, row.digest_retry_at = 0, None
        metrics.inc("notification_email", outcome="failed")
    else:
        base, cap = float(option("digest_retry_base_s")), float(option("digest_retry_max_s"))
        delay = backoff_s(row.digest_failures, base, cap)
        row.digest_retry_at = now + timedelta(seconds=delay)
        metrics.inc("notification_email", outcome="retry")
    row.save(update_fields=["digest_failures", "digest_retry_at"])
    return 0


def _message(to: str, notes: list[Notification]) -> EmailMessage:
    lines = []
    site = str(option("site_url")).rstrip("/")
    for note in notes:
        data = note.data
        actor = (data.get("actor") or {}).get("username")
        where = site + (f"/c/{data['conversation']}/" if data.get("conversation") else "/")
        lines.append(f"- [{note.kind.replace('_', ' ')}]{f' {actor}:' if actor else ''} {data.get('preview', '')}")
        lines.append(f"  {where}")
    subject = f"{len(notes)} new notification{'s' if len(notes) != 1 else ''} while you were away"
    body = "\n".join(
        [
            "Here is what happened while you were away:",
            "",
            *lines,
            "",
            f"Change what you are emailed about on the notification settings page: {site}/settings/notifications/",
        ]
    )
    return EmailMessage(subject=subject, body=body, from_email=settings.DEFAULT_FROM_EMAIL, to=[to])
