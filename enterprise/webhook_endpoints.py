"""Managing a workspace's webhook endpoints (REST `/api/workspaces/{id}/webhooks/`, and the admin).

Who may: the workspace's owners whose tier has the `webhooks` capability (chat/tiers.py; enterprise by
default). Anyone else who is a member is refused (403, saying why); a non-member is told the workspace does
not exist (404), as everywhere else. The secret (`whsec_…`, Standard Webhooks) is returned only by create and
rotate; rotation keeps the previous one signing beside it for ROTATION_OVERLAP, so receivers can switch.

Every change (create, update, enable/disable by staff, delete, rotate) is audited in its own transaction
(enterprise/audit.py): `webhook.created`, `webhook.updated`, `webhook.deleted`, `webhook.secret_rotated`, with
the URL as target and the endpoint's id; never a secret, which would then outlive its rotation in a log
that cannot be edited.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction

from chat.errors import NotFound, ServiceError
from chat.models import Role, Workspace, WorkspaceMember
from chat.selectors import parse_uuid
from chat.tiers import limits_for
from chat.wire.frames import rfc3339
from enterprise import egress
from enterprise.audit import audit_record
from enterprise.models import WebhookDelivery, WebhookEndpoint
from enterprise.webhooks import EVENT_TYPES, endpoints_changed

ROTATION_OVERLAP = timedelta(hours=24)
SECRET_BYTES = 32
DELIVERIES_PAGE_MAX = 100
CREATE_FIELDS = frozenset({"url", "events"})
UPDATE_FIELDS = frozenset({"url", "events", "enabled"})


def bad(message: str) -> ServiceError:
    return ServiceError("bad_request", message)


# --- access -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    workspace: Workspace
    user_id: int


def webhook_access(*, user_id: int, workspace_id: object) -> Access:
    """The workspace if the caller may manage its webhooks. NotFound for a non-member (whether or not it
    exists); ServiceError("forbidden") for a member who is not an owner, or an owner whose tier lacks it."""
    member = (
        WorkspaceMember.objects.select_related("workspace", "user")
        .filter(workspace_id=parse_uuid(workspace_id), user_id=user_id, user__is_active=True)
        .first()
    )
    if member is None:
        raise NotFound()
    if member.role != Role.OWNER:
        raise ServiceError("forbidden", "only a workspace owner may manage its webhooks")
    if not limits_for(member.user.tier).webhooks:
        raise ServiceError(
            "forbidden",
            f"webhooks are an enterprise feature: your tier ({member.user.tier}) does not include them",
        )
    return Access(workspace=member.workspace, user_id=user_id)


def endpoint_for(access: Access, endpoint_id: object) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(id=parse_uuid(endpoint_id), workspace=access.workspace).first()
    if endpoint is None:
        raise NotFound()
    return endpoint


# --- validation ---------------------------------------------------------------------------------------------


def checked_body(body: object, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad("expected a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad(f"unknown field(s): {', '.join(map(str, unknown))} (allowed: {', '.join(sorted(allowed))})")
    return body


def checked_url(url: object) -> str:
    """The URL as stored, if its form is right and its host resolves to allowed addresses only."""
    try:
        return egress.target(url, allow_private=settings.WEBHOOKS_ALLOW_PRIVATE).url
    except egress.Refused as exc:
        raise bad(str(exc)) from None


def checked_events(events: object) -> list[str]:
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise bad(f"events: expected a non-empty list of event types ({', '.join(EVENT_TYPES)})")
    unknown = sorted({e for e in events if e not in EVENT_TYPES})
    if unknown:
        raise bad(f"events: unknown event type(s) {', '.join(unknown)} (known: {', '.join(EVENT_TYPES)})")
    return sorted(set(events), key=list(EVENT_TYPES).index)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


# --- what the API answers -----------------------------------------------------------------------------------


def endpoint_json(endpoint: WebhookEndpoint, *, secret: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(endpoint.id),
        "url": endpoint.url,
        "events": list(endpoint.events),
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "failure_streak": endpoint.failure_streak,
        "created_at": rfc3339(endpoint.created_at),
    }
    if secret is not None:  # only on create and rotate: nobody can read it back later
        out["secret"] = secret
    return out


def delivery_json(delivery: WebhookDelivery) -> dict[str, Any]:
    def at(value: datetime | None) -> str | None:
        return None if value is None else rfc3339(value)

    return {
        "id": str(delivery.id),
        "webhook_id": delivery.message_id,
        "event": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": at(delivery.created_at),
        "next_attempt_at": at(delivery.next_attempt_at) if delivery.status == WebhookDelivery.Status.PENDING else None,
        "delivered_at": at(delivery.delivered_at),
        "attempt_log": [
            {"at": at(a.at), "status_code": a.status_code, "duration_ms": a.duration_ms, "error": a.error}
            for a in delivery.attempt_log.all()
        ],
    }


def _audit(action: str, endpoint: WebhookEndpoint, actor_id: int | None, **data: Any) -> None:
    audit_record(
        action,
        actor_id,
        workspace_id=endpoint.workspace_id,
        target=endpoint.url,
        data={"webhook_id": str(endpoint.id), **data},
    )


# --- the services -------------------------------------------------------------------------------------------


def endpoint_list(*, access: Access) -> list[dict[str, Any]]:
    rows = WebhookEndpoint.objects.filter(workspace=access.workspace).order_by("created_at")
    return [endpoint_json(e) for e in rows]


@transaction.atomic
def endpoint_create(*, access: Access, body: object) -> dict[str, Any]:
    body = checked_body(body, CREATE_FIELDS)
    url = checked_url(body.get("url"))
    events = checked_events(body.get("events"))
    # The workspace row lock makes the count and the insert one step for concurrent creators.
    Workspace.objects.select_for_update().filter(id=access.workspace.id).exists()
    limit = settings.WEBHOOKS_MAX_PER_WORKSPACE
    if WebhookEndpoint.objects.filter(workspace=access.workspace).count() >= limit:
        raise ServiceError("conflict", f"a workspace has at most {limit} webhook endpoints")
    secret = new_secret()
    endpoint = WebhookEndpoint.objects.create(
        workspace=access.workspace, url=url, events=events, secret=secret, created_by_id=access.user_id
    )
    _audit("webhook.created", endpoint, access.user_id, events=events)
    endpoints_changed()
    return endpoint_json(endpoint, secret=secret)


@transaction.atomic
def endpoint_update(*, endpoint: WebhookEndpoint, body: object, actor_id: int) -> dict[str, Any]:
    """PATCH: any of url, events, enabled. Enabling a disabled endpoint starts it afresh (no failure streak)."""
    body = checked_body(body, UPDATE_FIELDS)
    fields = ["updated_at"]
    if "url" in body:
        endpoint.url = checked_url(body["url"])
        fields.append("url")
    if "events" in body:
        endpoint.events = checked_events(body["events"])
        fields.append("events")
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            raise bad("enabled: expected true or false")
        endpoint_enable(endpoint, body["enabled"], fields)
    endpoint.save(update_fields=fields)
    changed = {"url": endpoint.url, "events": list(endpoint.events), "enabled": endpoint.enabled}
    _audit("webhook.updated", endpoint, actor_id, changed={key: changed[key] for key in body})
    endpoints_changed()
    return endpoint_json(endpoint)


def endpoint_enable(endpoint: WebhookEndpoint, enabled: bool, fields: list[str]) -> None:
    if enabled and not endpoint.enabled:
        endpoint.failure_streak, endpoint.failing_since, endpoint.disabled_reason = 0, None, ""
        fields += ["failure_streak", "failing_since", "disabled_reason"]
    elif not enabled and endpoint.enabled:
        endpoint.disabled_reason = "disabled by an owner"
        fields.append("disabled_reason")
    endpoint.enabled = enabled
    fields.append("enabled")


@transaction.atomic
def endpoint_set_enabled(*, endpoint_id: uuid.UUID, enabled: bool, actor_id: int) -> None:
    """Staff (the admin, which checked their permission) turn an endpoint on or off."""
    endpoint = WebhookEndpoint.objects.select_for_update().get(id=endpoint_id)
    fields = ["updated_at"]
    endpoint_enable(endpoint, enabled, fields)
    if enabled is False:
        endpoint.disabled_reason = "disabled by staff"
    endpoint.save(update_fields=fields)
    _audit("webhook.updated", endpoint, actor_id, changed={"enabled": enabled})
    endpoints_changed()


@transaction.atomic
def endpoint_delete(*, endpoint: WebhookEndpoint, actor_id: int) -> None:
    _audit("webhook.deleted", endpoint, actor_id)  # before the delete: the row's id and URL are read from it
    endpoint.delete()  # its deliveries and their attempt log go with it
    endpoints_changed()


@transaction.atomic
def secret_rotate(*, endpoint: WebhookEndpoint, now: datetime, actor_id: int) -> dict[str, Any]:
    """A new secret; the current one keeps signing (a second signature) for ROTATION_OVERLAP."""
    endpoint = WebhookEndpoint.objects.select_for_update().get(id=endpoint.id)
    secret = new_secret()
    endpoint.previous_secret, endpoint.previous_secret_expires_at = endpoint.secret, now + ROTATION_OVERLAP
    endpoint.secret = secret
    endpoint.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at", "updated_at"])
    out = endpoint_json(endpoint, secret=secret)
    out["previous_secret_expires_at"] = rfc3339(now + ROTATION_OVERLAP)
    _audit("webhook.secret_rotated", endpoint, actor_id, previous_secret_expires_at=out["previous_secret_expires_at"])
    return out


def deliveries_page(*, endpoint: WebhookEndpoint, limit: object = 50, status: object = None) -> list[dict[str, Any]]:
    """The endpoint's delivery log, newest first, each with its attempts."""
    try:
        count = int(str(limit))
    except ValueError:
        raise bad("limit: expected an integer") from None
    if not 1 <= count <= DELIVERIES_PAGE_MAX:
        raise bad(f"limit: 1-{DELIVERIES_PAGE_MAX}")
    rows = WebhookDelivery.objects.filter(endpoint=endpoint)
    if status is not None:
        if status not in WebhookDelivery.Status.values:
            raise bad(f"status: one of {', '.join(WebhookDelivery.Status.values)}")
        rows = rows.filter(status=status)
    page = rows.order_by("-created_at", "-id").prefetch_related("attempt_log")[:count]
    return [delivery_json(d) for d in page]


@transaction.atomic
def redeliver(*, endpoint_id: uuid.UUID, delivery_id: object, now: datetime) -> dict[str, Any]:
    """Send a delivery again, from the start of the schedule, with the same webhook-id (receivers deduplicate
    on it). Refused while it is still pending (it will be tried anyway) or its endpoint is disabled."""
    delivery = (
        WebhookDelivery.objects.select_for_update()
        .select_related("endpoint")
        .filter(id=parse_uuid(delivery_id), endpoint_id=endpoint_id)
        .first()
    )
    if delivery is None:
        raise NotFound()
    if not delivery.endpoint.enabled:
        raise ServiceError("conflict", "the endpoint is disabled: enable it first")
    if delivery.status == WebhookDelivery.Status.PENDING:
        raise ServiceError("conflict", "the delivery is still pending: it will be tried at its next attempt")
    delivery.status, delivery.attempts, delivery.next_attempt_at = WebhookDelivery.Status.PENDING, 0, now
    delivery.save(update_fields=["status", "attempts", "next_attempt_at"])
    return delivery_json(delivery)
