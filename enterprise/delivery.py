"""Sending webhook deliveries: signed (Standard Webhooks), retried on a schedule, off the request path.

`deliver_due(now)` is one pass of the webhooks worker (`manage.py webhooks_worker`, started by `serve`):
1. claim the due pending deliveries (SELECT … FOR UPDATE SKIP LOCKED, so several workers share the work) and
   lease them (next_attempt_at moves past the send's timeout: a worker that dies mid-send leaves them due
   again, not lost);
2. send them, several at once, each a POST of the payload with `webhook-id`, `webhook-timestamp` and
   `webhook-signature` headers, to the address checked just before (enterprise/egress.py), no redirects
   followed, within settings.WEBHOOKS_TIMEOUT_S;
3. record each attempt; a 2xx answer delivers, anything else (another status, a timeout, a refused address)
   schedules the next try after RETRY_SCHEDULE, and after the last one the delivery is FAILED.
An endpoint whose attempts have all failed for settings.WEBHOOKS_DISABLE_AFTER_S, and at least
settings.WEBHOOKS_DISABLE_MIN_FAILURES in a row, is disabled and its workspace's owners are notified.
`now` drives scheduling (tests pass their own clock); the signature's timestamp is always the wall clock,
because receivers check it against theirs.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from standardwebhooks import Webhook

from chat.models import Role, WorkspaceMember
from chat.services.notifications import notify
from enterprise import egress
from enterprise.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from enterprise.webhooks import endpoints_changed

logger = logging.getLogger(__name__)

# After the n-th failed attempt the next comes RETRY_SCHEDULE[n-1] later (settings.WEBHOOKS_RETRY_SCHEDULE_S; by
# default the Standard Webhooks / Svix schedule, about 28 hours in all); a failure after the last is final.
RETRY_SCHEDULE: tuple[timedelta, ...] = tuple(timedelta(seconds=s) for s in settings.WEBHOOKS_RETRY_SCHEDULE_S)
MAX_ATTEMPTS = len(RETRY_SCHEDULE) + 1
ERROR_MAX_CHARS = 500
USER_AGENT = "chat-webhooks/1"
Pending = WebhookDelivery.Status.PENDING


def retry_delay(attempts_made: int) -> timedelta | None:
    """How long after its `attempts_made`-th failed attempt a delivery is tried again; None: never."""
    if attempts_made < 1:
        return timedelta(0)
    return RETRY_SCHEDULE[attempts_made - 1] if attempts_made <= len(RETRY_SCHEDULE) else None


def lease() -> timedelta:
    # Longer than one send can take, so a claimed delivery is not claimed again while its send is in flight.
    return timedelta(seconds=settings.WEBHOOKS_TIMEOUT_S * 2 + 30)


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signature(*, secrets: list[str], message_id: str, timestamp: datetime, body: str) -> str:
    """The `webhook-signature` header: `v1,<base64>` per secret, space-separated (two during a rotation)."""
    return " ".join(Webhook(secret).sign(message_id, timestamp, body) for secret in secrets)


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    keys = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > now:
        keys.append(endpoint.previous_secret)
    return keys


def _error(text: str) -> str:
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 1] + "…"


def send(delivery: WebhookDelivery, secrets: list[str]) -> Outcome:
    """One HTTP attempt (no database: it runs on a sender thread)."""
    started = time.monotonic()

    def outcome(status_code: int | None, error: str) -> Outcome:
        return Outcome(status_code, _error(error), int((time.monotonic() - started) * 1000))

    try:
        # Resolved again now: the address checked at create time may not be the one the name has today.
        target = egress.target(delivery.endpoint.url, allow_private=settings.WEBHOOKS_ALLOW_PRIVATE)
    except egress.Refused as exc:
        return outcome(None, f"refused: {exc}")
    body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False)
    wall = timezone.now()
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "host": target.host_header(),
        "webhook-id": delivery.message_id,
        "webhook-timestamp": str(int(wall.timestamp())),
        "webhook-signature": signature(secrets=secrets, message_id=delivery.message_id, timestamp=wall, body=body),
    }
    try:
        # To the checked address, with the host's name for the Host header and TLS (SNI and certificate check).
        with httpx.Client(timeout=settings.WEBHOOKS_TIMEOUT_S, follow_redirects=False, trust_env=False) as client:
            response = client.post(
                target.pinned_url(), content=body.encode(), headers=headers, extensions={"sni_hostname": target.host}
            )
    except httpx.HTTPError as exc:
        return outcome(None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if 200 <= response.status_code < 300:
        return outcome(response.status_code, "")
    hint = " (redirects are not followed)" if response.is_redirect else ""
    return outcome(response.status_code, f"HTTP {response.status_code}{hint}")


def claim_due(*, now: datetime, batch: int) -> list[WebhookDelivery]:
    with transaction.atomic():
        rows = list(
            WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("endpoint")
            .filter(status=Pending, next_attempt_at__lte=now)
            .order_by("next_attempt_at")[:batch]
        )
        if rows:
            WebhookDelivery.objects.filter(id__in=[r.id for r in rows]).update(next_attempt_at=now + lease())
    return rows


def deliver_due(now: datetime | None = None) -> dict[str, int]:
    """One pass: claim, send and record the due deliveries; returns the counts, for the log and tests."""
    now = now or timezone.now()
    rows = claim_due(now=now, batch=settings.WEBHOOKS_BATCH)
    done = {"delivered": 0, "retrying": 0, "failed": 0}
    live = [r for r in rows if r.endpoint.enabled]
    for row in rows:
        if not row.endpoint.enabled:  # enqueued by a process that had not yet heard of the disabling
            give_up(row, "endpoint disabled")
            done["failed"] += 1
    if not live:
        return done
    with ThreadPoolExecutor(max_workers=max(1, min(settings.WEBHOOKS_SENDERS, len(live)))) as pool:
        outcomes = list(pool.map(lambda d: send(d, signing_secrets(d.endpoint, now)), live))
    for row, result in zip(live, outcomes, strict=True):
        state = record(delivery_id=row.id, outcome=result, now=now)
        done[state] += 1
    return done


def give_up(delivery: WebhookDelivery, reason: str) -> None:
    WebhookDelivery.objects.filter(id=delivery.id, status=Pending).update(
        status=WebhookDelivery.Status.FAILED, next_attempt_at=None, last_error=reason
    )


@transaction.atomic
def record(*, delivery_id: uuid.UUID, outcome: Outcome, now: datetime) -> str:
    """Store one attempt and what follows from it: "delivered", "retrying" or "failed"."""
    delivery = WebhookDelivery.objects.select_for_update().get(id=delivery_id)
    endpoint = WebhookEndpoint.objects.select_for_update().get(id=delivery.endpoint_id)
    WebhookAttempt.objects.create(
        delivery=delivery,
        at=now,
        status_code=outcome.status_code,
        duration_ms=outcome.duration_ms,
        error=outcome.error,
    )
    delivery.attempts += 1
    delivery.last_status_code, delivery.last_error = outcome.status_code, outcome.error
    if outcome.ok:
        delivery.status, delivery.delivered_at, delivery.next_attempt_at = WebhookDelivery.Status.SUCCEEDED, now, None
        endpoint.failure_streak, endpoint.failing_since = 0, None
        state = "delivered"
    else:
        delay = retry_delay(delivery.attempts)
        if delay is None:
            delivery.status, delivery.next_attempt_at = WebhookDelivery.Status.FAILED, None
            state = "failed"
        else:
            delivery.next_attempt_at = now + delay
            state = "retrying"
        endpoint.failure_streak += 1
        endpoint.failing_since = endpoint.failing_since or now
        if not endpoint.enabled:  # disabled while this attempt was in flight: its deliveries have failed
            delivery.status, delivery.next_attempt_at = WebhookDelivery.Status.FAILED, None
            state = "failed"
    delivery.save(
        update_fields=["attempts", "last_status_code", "last_error", "status", "delivered_at", "next_attempt_at"]
    )
    endpoint.save(update_fields=["failure_streak", "failing_since"])
    if not outcome.ok and endpoint.enabled and sustained_failure(endpoint, now):
        disable(endpoint, now)
        if state == "retrying":
            state = "failed"
    return state


def sustained_failure(endpoint: WebhookEndpoint, now: datetime) -> bool:
    """Every attempt has failed for WEBHOOKS_DISABLE_AFTER_S, and at least WEBHOOKS_DISABLE_MIN_FAILURES of them
    (so one old failure and one new one do not disable an endpoint that was simply quiet in between)."""
    since = endpoint.failing_since
    return (
        since is not None
        and endpoint.failure_streak >= settings.WEBHOOKS_DISABLE_MIN_FAILURES
        and now - since >= timedelta(seconds=settings.WEBHOOKS_DISABLE_AFTER_S)
    )


def disable(endpoint: WebhookEndpoint, now: datetime) -> None:
    """Stop sending to a receiver that has been failing for days; its pending deliveries fail; the workspace's
    owners are told (in the transaction of the disabling)."""
    days = (now - endpoint.failing_since).total_seconds() / 86400 if endpoint.failing_since else 0
    reason = f"disabled after {endpoint.failure_streak} failed attempts in {days:.1f} days without a success"
    WebhookEndpoint.objects.filter(id=endpoint.id).update(enabled=False, disabled_reason=reason[:200])
    WebhookDelivery.objects.filter(endpoint_id=endpoint.id, status=Pending).update(
        status=WebhookDelivery.Status.FAILED, next_attempt_at=None, last_error="endpoint disabled"
    )
    endpoints_changed()
    owners = WorkspaceMember.objects.filter(workspace_id=endpoint.workspace_id, role=Role.OWNER).values_list(
        "user_id", flat=True
    )
    notify(
        user_ids=list(owners),
        kind="webhook_disabled",
        conversation_id=None,
        seq=None,
        actor=None,
        preview=f"Webhook {endpoint.url} was {reason}; enable it again once it answers",
    )
    logger.warning("webhook endpoint %s %s", endpoint.id, reason)
