"""Webhook events, and their enqueueing in the transaction of the change they report (the outbox).

Every durable event passes through chat.services.events.append_event, which calls `enqueue_for_event` in its
transaction: one WebhookDelivery row per enabled endpoint of the conversation's workspace subscribed to the
event's webhook type. A rolled-back change therefore enqueues nothing, and a committed one cannot lose its
deliveries (enterprise/delivery.py sends them later, off the request path).

The hot path stays cheap: an event type with no webhook counterpart (agent_delta, tool_*...) costs a dict
lookup; otherwise the workspace's subscribed endpoints are read with one indexed query and remembered by the
process for settings.WEBHOOKS_ENDPOINT_CACHE_S. A change of endpoints bumps this process's generation (so
this process sees it at once); other processes see it within that time.

This module imports no chat service: chat.services.events imports it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from chat.models import Conversation, User
from chat.wire.frames import rfc3339
from enterprise.models import WebhookDelivery, WebhookEndpoint

# The webhook event types an endpoint may subscribe to, with what each says.
EVENT_TYPES: dict[str, str] = {
    "message.created": "a person posted a message",
    "run.completed": "an agent run answered",
    "run.failed": "an agent run failed",
    "approval.requested": "an agent's tool call waits for a member's approval",
    "member.added": "someone became a member of a conversation",
}


def _ref(value: Any) -> dict[str, Any] | None:
    return {"id": value.get("id"), "username": value.get("username")} if isinstance(value, dict) else None


def _message(data: dict[str, Any]) -> dict[str, Any]:
    author = data.get("author") or {}
    return {
        "message_id": data.get("id"),
        "author": {**(_ref(author) or {}), "kind": author.get("kind", "user")},
        "text": data.get("text", ""),
        "mentions": data.get("mentions", []),
    }


def _run_completed(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": data.get("run_id"),
        "status": "completed",
        "message_id": data.get("message_id"),
        "text": data.get("text", ""),
        "duration_ms": data.get("duration_ms"),
        "usage": data.get("usage") or {},
    }


def _run_failed(data: dict[str, Any]) -> dict[str, Any]:
    error = data.get("error") or {}
    return {
        "run_id": data.get("run_id"),
        "status": "failed",
        "error": {"code": error.get("code"), "message": error.get("message")},
    }


def _approval(data: dict[str, Any]) -> dict[str, Any]:
    keys = ("run_id", "call_id", "tool", "arguments", "reason", "approver_role", "expires_at")
    return {key: data.get(key) for key in keys}


def _member(data: dict[str, Any]) -> dict[str, Any]:
    return {"user": _ref(data.get("user")), "role": data.get("role"), "by": _ref(data.get("by"))}


# Durable event type (docs/protocol.md §4) → (webhook event type, the payload's data from the event's data).
# Only these fields leave the deployment: the webhook format is a contract of its own, not the socket's.
FROM_EVENTS: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "message": ("message.created", _message),
    "agent_completed": ("run.completed", _run_completed),
    "agent_failed": ("run.failed", _run_failed),
    "approval_requested": ("approval.requested", _approval),
    "member_joined": ("member.added", _member),
}


def payload(*, type: str, at: datetime, data: dict[str, Any]) -> dict[str, Any]:
    """The body of a delivery: `{"type", "timestamp" (RFC 3339, when it happened), "data"}`."""
    return {"type": type, "timestamp": rfc3339(at), "data": data}


# --- the per-process cache of subscribed endpoints ---------------------------------------------------------

_lock = threading.Lock()
_generation = 0
# workspace id → (monotonic deadline, generation, [(endpoint id, its event types)])
_cache: dict[str, tuple[float, int, list[tuple[uuid.UUID, frozenset[str]]]]] = {}


def endpoints_changed() -> None:
    """Forget this process's cached endpoints (endpoint writes call it): now, and again once the change commits,
    since another thread may cache the old rows in between."""
    _bump()
    transaction.on_commit(_bump)


def _bump() -> None:
    global _generation
    with _lock:
        _generation += 1
        _cache.clear()


def _subscribed(workspace_id: str) -> list[tuple[uuid.UUID, frozenset[str]]]:
    now = time.monotonic()
    hit = _cache.get(workspace_id)
    generation = _generation
    if hit is not None and hit[0] > now and hit[1] == generation:
        return hit[2]
    rows = [
        (endpoint_id, frozenset(events))
        for endpoint_id, events in WebhookEndpoint.objects.filter(workspace_id=workspace_id, enabled=True)
        .values_list("id", "events")
        .order_by()
    ]
    with _lock:
        if generation == _generation:  # a bump during the query would make these rows stale
            _cache[workspace_id] = (now + settings.WEBHOOKS_ENDPOINT_CACHE_S, generation, rows)
    return rows


# --- enqueueing ---------------------------------------------------------------------------------------------


def _still_subscribed(endpoint_ids: list[uuid.UUID], type: str) -> list[uuid.UUID]:
    """Those of the cached endpoints that still exist, are enabled and subscribed, read now and (PostgreSQL)
    held with FOR KEY SHARE: the cache may be a few seconds old, and a delivery must not point at an endpoint
    deleted meanwhile (the foreign key would fail the commit, and with it the chat write that enqueued it).
    KEY SHARE blocks only the deletion, until this transaction ends; the worker's updates go on."""
    table = WebhookEndpoint._meta.db_table
    connection = transaction.get_connection()
    marks = ", ".join(["%s"] * len(endpoint_ids))
    lock = " FOR KEY SHARE" if connection.vendor == "postgresql" else ""
    field = WebhookEndpoint._meta.pk
    params = [field.get_db_prep_value(i, connection) for i in endpoint_ids]  # type: ignore[union-attr]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, events FROM {table} WHERE id IN ({marks}) AND enabled{lock}", params)
        rows = cursor.fetchall()
    subscribed = []
    for raw_id, raw_events in rows:
        # A raw cursor hands JSON back as text (Django's loader leaves decoding to the field).
        events = json.loads(raw_events) if isinstance(raw_events, str | bytes) else raw_events
        if type in events:
            subscribed.append(raw_id if isinstance(raw_id, uuid.UUID) else uuid.UUID(str(raw_id)))
    return subscribed


def enqueue(*, workspace_id: str, type: str, data: dict[str, Any], at: datetime) -> int:
    """Write a pending delivery of webhook event `type` for every enabled endpoint of the workspace subscribed
    to it, in the caller's transaction; returns how many."""
    cached = [endpoint_id for endpoint_id, events in _subscribed(workspace_id) if type in events]
    if not cached:
        return 0  # the common case: no query at all
    endpoint_ids = _still_subscribed(cached, type)
    if not endpoint_ids:
        return 0
    body = payload(type=type, at=at, data=data)
    # One id for the event: a receiver subscribed twice sees the same webhook-id (Standard Webhooks).
    message_id = f"msg_{uuid.uuid4().hex}"
    WebhookDelivery.objects.bulk_create(
        WebhookDelivery(
            endpoint_id=endpoint_id, message_id=message_id, event_type=type, payload=body, next_attempt_at=at
        )
        for endpoint_id in endpoint_ids
    )
    return len(endpoint_ids)


def enqueue_for_event(
    *, workspace_id: object, conversation_id: str, seq: int, type: str, data: dict[str, Any], at: datetime
) -> int:
    """append_event's tap: the webhook counterpart of durable event `type`, if it has one."""
    mapped = FROM_EVENTS.get(type)
    if mapped is None or workspace_id is None:
        return 0
    name, shape = mapped
    workspace = _uuid_str(workspace_id)
    body = {"conversation_id": _uuid_str(conversation_id), "workspace_id": workspace, "seq": seq, **shape(data)}
    return enqueue(workspace_id=workspace, type=name, data=body, at=at)


def _uuid_str(value: object) -> str:
    # SQLite (embedded mode) hands a raw UUID column back as 32 hex digits; the payload always has the dashes.
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))


def enqueue_member_added(*, conversation_id: str, user_id: int, username: str, role: str, by_id: int | None) -> int:
    """`member.added` for a membership that no durable event reports (an owner's, the agent's or staff's
    invitation: chat/services/conversations.py tells the invited user with a notification instead)."""
    found = Conversation.objects.filter(id=conversation_id).values_list("workspace_id", flat=True).first()
    if found is None:
        return 0
    workspace = _uuid_str(found)
    if not any("member.added" in events for _, events in _subscribed(workspace)):
        return 0  # the common case: one indexed read, nothing to look up for the payload
    by = User.objects.filter(id=by_id).values("id", "username").first() if by_id is not None else None
    data = {
        "conversation_id": _uuid_str(conversation_id),
        "workspace_id": workspace,
        "seq": None,
        **_member({"user": {"id": user_id, "username": username}, "role": role, "by": by}),
    }
    return enqueue(workspace_id=workspace, type="member.added", data=data, at=timezone.now())
