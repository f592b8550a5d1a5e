"""Webhook endpoints and their deliveries, and the append-only audit log."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models


class WebhookEndpoint(models.Model):
    """A workspace's receiver of signed event deliveries (Standard Webhooks)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey("chat.Workspace", on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=2000)
    # Event names this endpoint receives, e.g. ["message.created", "run.completed"].
    events = models.JSONField(default=list)
    # "whsec_<base64>"; the previous one keeps signing (a second signature) until it expires, so a
    # receiver can roll its secret without dropping deliveries.
    secret = models.CharField(max_length=100)
    previous_secret = models.CharField(max_length=100, blank=True, default="")
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=200, blank=True, default="")
    # Consecutive failed deliveries since the last success, and when that streak began: sustained
    # failure disables the endpoint.
    failure_streak = models.PositiveIntegerField(default=0)
    failing_since = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.url


class WebhookDelivery(models.Model):
    """One event for one endpoint: written in the transaction of the change it reports, sent later."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed (no more retries)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    # The `webhook-id` header: stable across retries and redeliveries, so receivers can deduplicate.
    message_id = models.CharField(max_length=64)
    event_type = models.CharField(max_length=64)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.IntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="ent_delivery_due"),
            models.Index(fields=["endpoint", "created_at"], name="ent_delivery_log"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.endpoint_id}"


class WebhookAttempt(models.Model):
    """One HTTP attempt of a delivery: the per-endpoint delivery log staff and owners read."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    at = models.DateTimeField()
    status_code = models.IntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        ordering = ["delivery", "at"]


class AppendOnlyError(Exception):
    """An audit entry was about to be changed or deleted: the log is append-only."""


class AuditQuerySet(models.QuerySet["AuditEntry"]):
    """Refuses bulk change. Only the retention purge (enterprise/audit.py `audit_purge`) deletes, by
    `purge()`; on PostgreSQL a trigger refuses any other UPDATE or DELETE too (migration 0002)."""

    def update(self, **kwargs: Any) -> int:
        raise AppendOnlyError("audit entries are append-only: update refused")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("audit entries are append-only: delete refused (the retention purge deletes)")

    def purge(self) -> int:
        """Delete these entries: for `audit_purge` only, which also tells the trigger it is the purge."""
        return models.QuerySet.delete(self)[0]


class AuditEntry(models.Model):
    """Who did what, when: append-only. Ids are copied, not foreign keys, so the record outlives its subjects."""

    objects = AuditQuerySet.as_manager()

    at = models.DateTimeField(db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_username = models.CharField(max_length=150, blank=True, default="")
    # e.g. "member.added", "member.role_changed", "tier.changed", "webhook.created", "export.downloaded".
    action = models.CharField(max_length=64, db_index=True)
    workspace_id = models.UUIDField(null=True, blank=True, db_index=True)
    conversation_id = models.UUIDField(null=True, blank=True)
    target = models.CharField(max_length=200, blank=True, default="")
    data = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_username or '-'} {self.action}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError("audit entries are append-only: an entry is never saved twice")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("audit entries are append-only: delete refused (the retention purge deletes)")


class SlaMeasurement(models.Model):
    """Good and total samples of one SLA objective for one UTC day (enterprise/sla.py), kept for the monthly
    reports: recorded as they happen, never recomputed from logs that may have been compacted since.

    Per workspace (`workspace_id` set): run_success and first_event, added at each run's end. Platform-wide
    (`workspace_id` null): availability, one sample per minute in which the database answered."""

    workspace_id = models.UUIDField(null=True, blank=True)
    # The workspace's tier when the sample was taken (blank for platform-wide rows).
    tier = models.CharField(max_length=16, blank=True, default="")
    day = models.DateField()
    objective = models.CharField(max_length=32)
    good = models.BigIntegerField(default=0)
    total = models.BigIntegerField(default=0)
    created_at = models.DateTimeField()
    # The last sample: a platform-wide row takes one per minute, however many processes sample.
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["workspace_id", "day", "objective"],
                condition=models.Q(workspace_id__isnull=False),
                name="uniq_sla_workspace_day",
            ),
            models.UniqueConstraint(
                fields=["day", "objective"], condition=models.Q(workspace_id__isnull=True), name="uniq_sla_platform_day"
            ),
        ]
        ordering = ["-day", "objective"]

    def __str__(self) -> str:
        return f"{self.day} {self.objective} {self.good}/{self.total} ({self.workspace_id or 'platform'})"
