"""Web Push (docs/protocol.md §9): the devices' subscriptions, and the two passes of the notifications
worker that deliver pushes.

1. `plan_pushes(now)`: notifications marked for push whose time has come are grouped per user, kind
   and conversation. A group that is not urgent waits while the user's quiet hours or
   `muted_until` hold it, and while a push of the same kind and conversation went out less than the
   collapse window ago; then it becomes ONE push with the group's count, queued as a `PushDelivery`
   to each of the user's devices. A notification read meanwhile is not pushed at all.
2. `send_pushes(now)`: each due delivery is encrypted (aes128gcm) and signed (VAPID) by pywebpush
   and POSTed to its push service. Accepted: done. 404/410: the subscription is dead and removed
   with its deliveries. 429, 5xx or no answer: retried with backoff until the attempts run out.
   Any other refusal is final. A delivery is leased while it is sent, so two workers never send it
   twice, and one whose worker died is retried when its lease ends.
Both run off the request path, in the notifications worker (chat/realtime/notification_worker.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.db import transaction
from django.db.models import Max

from chat.errors import ServiceError
from chat.models import Notification, NotificationSettings, PushDelivery, PushSubscription
from chat.services.notification_config import b64url_decode, b64url_encode, option, vapid_private_key
from chat.services.notification_prefs import held_until
from monitoring.metrics import metrics

logger = logging.getLogger(__name__)

Delivery = Notification.Delivery
MAX_ENDPOINT_CHARS = 2048
URGENCY = {"urgent": "high", "normal": "normal", "low": "low"}  # the Web Push Urgency header


# --- subscriptions --------------------------------------------------------------------------------------


def subscription_save(*, user_id: int, body: object, now: datetime) -> PushSubscription:
    """Store the browser's PushSubscription JSON for this device (the same endpoint again updates its
    keys). Beyond `max_subscriptions_per_user` devices the oldest is dropped."""
    endpoint, p256dh, auth = _valid_subscription(body)
    with transaction.atomic():
        sub, _ = PushSubscription.objects.update_or_create(
            user_id=user_id, endpoint=endpoint, defaults={"p256dh": p256dh, "auth": auth, "created_at": now}
        )
        keep = int(option("max_subscriptions_per_user"))
        stale = PushSubscription.objects.filter(user_id=user_id).order_by("-created_at", "-id")[keep:]
        PushSubscription.objects.filter(id__in=[s.id for s in stale]).delete()
    return sub


def subscription_delete(*, user_id: int, body: object) -> bool:
    """Remove this device's subscription (only the caller's own); False when there was none."""
    endpoint = body.get("endpoint") if isinstance(body, dict) else None
    if not isinstance(endpoint, str) or not endpoint:
        raise ServiceError("bad_request", "endpoint: expected the subscription's endpoint URL")
    deleted, _ = PushSubscription.objects.filter(user_id=user_id, endpoint=endpoint).delete()
    return bool(deleted)


def _valid_subscription(body: object) -> tuple[str, str, str]:
    if not isinstance(body, dict):
        raise ServiceError("bad_request", "expected the PushSubscription JSON: {endpoint, keys: {p256dh, auth}}")
    endpoint, keys = body.get("endpoint"), body.get("keys")
    if not isinstance(endpoint, str) or not endpoint or len(endpoint) > MAX_ENDPOINT_CHARS:
        raise ServiceError("bad_request", f"endpoint: expected a URL of at most {MAX_ENDPOINT_CHARS} characters")
    if not endpoint_allowed(endpoint):
        raise ServiceError("bad_request", "endpoint: not a push service this server delivers to")
    if not isinstance(keys, dict):
        raise ServiceError("bad_request", "keys: expected {p256dh, auth}")
    p256dh, auth = keys.get("p256dh"), keys.get("auth")
    if not isinstance(p256dh, str) or _b64_len(p256dh) != 65 or b64url_decode(p256dh)[:1] != b"\x04":
        raise ServiceError("bad_request", "keys.p256dh: expected an uncompressed P-256 public key, base64url")
    if not isinstance(auth, str) or _b64_len(auth) != 16:
        raise ServiceError("bad_request", "keys.auth: expected a 16-byte secret, base64url")
    return endpoint, p256dh, auth


def _b64_len(text: str) -> int:
    if len(text) > 200:
        return -1
    try:
        return len(b64url_decode(text))
    except ValueError:
        return -1


def endpoint_allowed(endpoint: str) -> bool:
    """https to a configured push service (or a parent domain of it), or plain http to a host:port
    listed for local tests. Nothing else: the worker must not be made to POST to internal addresses."""
    try:
        url = urlsplit(endpoint)
        port = url.port
    except ValueError:
        return False
    host = (url.hostname or "").lower()
    if url.username or url.password or not host:
        return False
    if url.scheme == "http":
        return f"{host}:{port}" in option("push_insecure_hosts")
    if url.scheme != "https" or port not in (None, 443):
        return False
    return any(host == allowed or host.endswith("." + allowed) for allowed in option("push_hosts"))


# --- 1. planning ---------------------------------------------------------------------------------------


def plan_pushes(*, now: datetime) -> int:
    """Turn due notifications into deliveries (see the module's docstring). Returns the pushes queued."""
    with transaction.atomic():
        due = list(
            Notification.objects.select_for_update(skip_locked=True)
            .filter(push_state=Delivery.PENDING, push_due_at__lte=now)
            .order_by("push_due_at", "id")[: int(option("batch"))]
        )
        if not due:
            return 0
        users = {n.user_id for n in due}
        settings_rows = {s.user_id: s for s in NotificationSettings.objects.filter(user_id__in=users)}
        subscriptions: dict[int, list[PushSubscription]] = defaultdict(list)
        for sub in PushSubscription.objects.filter(user_id__in=users):
            subscriptions[sub.user_id].append(sub)
        groups: dict[tuple[int, str, str | None], list[Notification]] = defaultdict(list)
        for note in due:
            row = settings_rows.get(note.user_id)
            if (row is not None and note.seq <= row.read_seq) or not subscriptions[note.user_id]:
                _mark(note, Delivery.SKIPPED)  # seen already, or no device to push to
                continue
            groups[(note.user_id, note.kind, str(note.conversation_id) if note.conversation_id else None)].append(note)
        queued = 0
        for (user_id, kind, conversation), notes in groups.items():
            urgent = any(n.priority == "urgent" for n in notes)
            wait = None if urgent else _wait(settings_rows.get(user_id), user_id, kind, conversation, now)
            if wait is not None:
                Notification.objects.filter(id__in=[n.id for n in notes]).update(push_due_at=wait)
                metrics.inc("notification_push", outcome="held")
                continue
            payload = push_payload(notes)
            PushDelivery.objects.bulk_create(
                PushDelivery(
                    subscription=sub,
                    payload=payload,
                    urgency=URGENCY.get(payload["priority"], "normal"),
                    topic=topic_of(payload["tag"]),
                    due_at=now,
                    created_at=now,
                )
                for sub in subscriptions[user_id]
            )
            Notification.objects.filter(id__in=[n.id for n in notes]).update(push_state=Delivery.DONE, pushed_at=now)
            queued += 1
    metrics.inc("notification_push", queued, outcome="queued")
    return queued


def _mark(note: Notification, state: str) -> None:
    Notification.objects.filter(id=note.id).update(push_state=state)


def _wait(row: NotificationSettings | None, user_id: int, kind: str, conversation: str | None, now: datetime) -> Any:
    """When a non-urgent group may go out, if not now: quiet hours / muted_until, then the collapse
    window after the last push of the same kind and conversation."""
    held = held_until(row, now)
    if held is not None:
        return held
    last = Notification.objects.filter(
        user_id=user_id, kind=kind, conversation_id=conversation, pushed_at__isnull=False
    ).aggregate(last=Max("pushed_at"))["last"]
    window = timedelta(seconds=float(option("collapse_window_s")))
    return last + window if last is not None and now < last + window else None


def push_payload(notes: list[Notification]) -> dict[str, Any]:
    """What the service worker shows (chat/static/chat/sw.js): the newest notification of the group
    and how many it stands for."""
    latest = max(notes, key=lambda n: n.seq)
    data, count = latest.data, len(notes)
    conversation = data.get("conversation")
    actor = (data.get("actor") or {}).get("username")
    titles = {
        "mention": f"{actor or 'Someone'} mentioned you",
        "agent_finished": "The assistant finished",
        "approval_requested": f"Approval needed: {data.get('tool', 'a tool')}",
        "added_to_conversation": f"Added to {data.get('title', 'a conversation')}",
        "role_changed": f"Your role in {data.get('title', 'a conversation')} changed",
        "test": "Test notification",
        "webhook_disabled": "A webhook was disabled",
    }
    title = titles.get(latest.kind, "Notification")
    return {
        "title": f"{title} (+{count - 1} more)" if count > 1 else title,
        "body": data.get("preview", ""),
        "kind": latest.kind,
        "priority": max((n.priority for n in notes), key=["low", "normal", "urgent"].index),
        "count": count,
        "conversation": conversation,
        "seq": data.get("seq"),
        "notification_seq": latest.seq,
        "url": f"/c/{conversation}/" if conversation else "/",
        "tag": f"{latest.kind}:{conversation or '-'}",
    }


def topic_of(tag: str) -> str:
    """A Web Push Topic (≤ 32 base64url characters): a push service replaces a waiting message of the
    same topic, so a device that was offline gets the newest of a kind and conversation only."""
    return b64url_encode(hashlib.sha256(tag.encode()).digest()[:16])


# --- 2. sending ----------------------------------------------------------------------------------------


def send_pushes(*, now: datetime) -> dict[str, int]:
    """Send every due delivery once (see the module's docstring); returns the outcomes counted."""
    lease = timedelta(seconds=float(option("push_timeout_s")) * 3)
    with transaction.atomic():
        batch = list(
            PushDelivery.objects.select_for_update(skip_locked=True)
            .select_related("subscription")
            .filter(due_at__lte=now)
            .order_by("due_at", "id")[: int(option("batch"))]
        )
        PushDelivery.objects.filter(id__in=[d.id for d in batch]).update(due_at=now + lease)
    outcomes: dict[str, int] = defaultdict(int)
    for delivery in batch:
        outcome = _send_one(delivery, now)
        outcomes[outcome] += 1
        metrics.inc("notification_push", outcome=outcome)
    return dict(outcomes)


def _send_one(delivery: PushDelivery, now: datetime) -> str:
    from pywebpush import WebPushException, webpush  # imported on first send: it pulls in requests and aiohttp

    sub = delivery.subscription
    if not vapid_private_key():
        delivery.delete()
        return "unconfigured"
    try:
        webpush(
            subscription_info={"endpoint": sub.endpoint, "keys": {"p256dh": sub.p256dh, "auth": sub.auth}},
            data=json.dumps(delivery.payload),
            vapid_private_key=vapid_private_key(),
            vapid_claims={"sub": str(option("vapid_subject"))},
            ttl=int(option("push_ttl_s")),
            timeout=float(option("push_timeout_s")),
            headers={"Urgency": delivery.urgency, "Topic": delivery.topic} if delivery.topic else {},
        )
    except WebPushException as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (404, 410):  # the browser unsubscribed or the subscription expired
            PushSubscription.objects.filter(id=sub.id).delete()
            return "dead"
        if status is not None and status != 429 and status < 500:
            logger.warning("push refused by %s with %s; dropped", urlsplit(sub.endpoint).hostname, status)
            delivery.delete()
            return "refused"
        return _retry(delivery, now, f"status {status}")
    except Exception as exc:  # no answer: connection refused, timeout, TLS
        return _retry(delivery, now, type(exc).__name__)
    PushSubscription.objects.filter(id=sub.id).update(last_success_at=now)
    delivery.delete()
    return "sent"


def _retry(delivery: PushDelivery, now: datetime, why: str) -> str:
    attempts = delivery.attempts + 1
    if attempts >= int(option("push_max_attempts")):
        logger.warning("push to %s failed %d times (%s); dropped", delivery.subscription_id, attempts, why)
        delivery.delete()
        return "failed"
    delay = backoff_s(attempts, float(option("push_retry_base_s")), float(option("push_retry_max_s")))
    PushDelivery.objects.filter(id=delivery.id).update(attempts=attempts, due_at=now + timedelta(seconds=delay))
    return "retry"


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential with jitter (half fixed, half random), so failed deliveries do not return together."""
    ceiling = min(max_s, base_s * 2 ** min(attempt, 20))
    return ceiling / 2 + random.random() * ceiling / 2
