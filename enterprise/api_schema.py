"""The OpenAPI description of the enterprise REST views (enterprise/api.py, api_analytics.py, api_audit.py,
api_export.py;
docs/protocol.md §7, docs/operations.md "Webhooks"): one decorator per view, as in chat/api_schema.py, whose
error bodies it shares. Documentation shapes only: the services validate the bodies themselves."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers

from chat.api_schema import (
    AUTH_ERRORS,
    BAD_REQUEST,
    BODY_ERRORS,
    CONFLICT,
    ERROR,
    NO_CONTENT,
    NOT_FOUND,
    WORKSPACE_ID,
    uuid_path,
)
from enterprise.analytics import GRANULARITIES
from enterprise.audit import PAGE_DEFAULT, PAGE_MAX
from enterprise.models import WebhookDelivery
from enterprise.sla import OBJECTIVES
from enterprise.webhook_endpoints import DELIVERIES_PAGE_MAX
from enterprise.webhooks import EVENT_TYPES

WEBHOOK_ID = uuid_path("webhook_id", "webhook")
DELIVERY_ID = uuid_path("delivery_id", "delivery")
# These views answer every refusal (a 404 too) as {"error": {...}}.
BAD = OpenApiResponse(ERROR, description="invalid input; the message names the field")
MISSING = OpenApiResponse(ERROR, description="not found, or not visible to the caller (the two answer alike)")
OWNERS_ONLY = OpenApiResponse(
    ERROR, description="a member who is not an owner, or a tier without this feature (the message says which)"
)
OWNER_ERRORS = {**AUTH_ERRORS, 403: OWNERS_ONLY, 404: MISSING}


class Webhook(serializers.Serializer):
    id = serializers.UUIDField()
    url = serializers.URLField()
    events = serializers.ListField(child=serializers.ChoiceField(choices=list(EVENT_TYPES)))
    enabled = serializers.BooleanField()
    disabled_reason = serializers.CharField(allow_blank=True)
    failure_streak = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class WebhookWithSecret(Webhook):
    secret = serializers.CharField(help_text="shown only here: it cannot be read back later")


class WebhookRotated(WebhookWithSecret):
    previous_secret_expires_at = serializers.DateTimeField(help_text="the old secret keeps signing until then")


class WebhookCreate(serializers.Serializer):
    url = serializers.URLField(help_text="https; never a private or loopback address")
    events = serializers.ListField(child=serializers.ChoiceField(choices=list(EVENT_TYPES)), min_length=1)


class WebhookUpdate(serializers.Serializer):
    url = serializers.URLField(required=False)
    events = serializers.ListField(child=serializers.ChoiceField(choices=list(EVENT_TYPES)), required=False)
    enabled = serializers.BooleanField(required=False)


class Attempt(serializers.Serializer):
    at = serializers.DateTimeField(allow_null=True)
    status_code = serializers.IntegerField(allow_null=True)
    duration_ms = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_blank=True, allow_null=True)


class Delivery(serializers.Serializer):
    id = serializers.UUIDField()
    webhook_id = serializers.CharField(help_text="the webhook-id header receivers deduplicate on")
    event = serializers.CharField()
    status = serializers.ChoiceField(choices=WebhookDelivery.Status.values)
    attempts = serializers.IntegerField()
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField(allow_blank=True, allow_null=True)
    created_at = serializers.DateTimeField(allow_null=True)
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    delivered_at = serializers.DateTimeField(allow_null=True)
    attempt_log = Attempt(many=True)


class AnalyticsReport(serializers.Serializer):
    """Totals and one cell per bucket; which figures a cell holds depends on the tier's `sections`."""

    workspace_id = serializers.UUIDField()
    tier = serializers.CharField()
    sections = serializers.ListField(child=serializers.CharField())
    # `from` is a Python keyword: declared in get_fields.
    to = serializers.DateField()
    granularity = serializers.ChoiceField(choices=list(GRANULARITIES))
    time_zone = serializers.CharField()
    totals = serializers.DictField()
    series = serializers.ListField(child=serializers.DictField())

    def get_fields(self) -> dict[str, serializers.Field]:
        return {"from": serializers.DateField(), **super().get_fields()}


class SlaObjective(serializers.Serializer):
    objective = serializers.ChoiceField(choices=list(OBJECTIVES))
    target = serializers.FloatField()
    measured = serializers.FloatField(allow_null=True, help_text="null: nothing measured this month")
    met = serializers.BooleanField()
    good = serializers.IntegerField()
    sample_size = serializers.IntegerField()
    unit = serializers.CharField()
    within_s = serializers.FloatField(required=False, help_text="first_event only: the time limit")


class SlaReport(serializers.Serializer):
    workspace_id = serializers.UUIDField()
    tier = serializers.CharField()
    month = serializers.CharField(help_text="YYYY-MM")
    objectives = SlaObjective(many=True)


class AuditActor(serializers.Serializer):
    id = serializers.IntegerField(allow_null=True)
    username = serializers.CharField()


class AuditEntry(serializers.Serializer):
    id = serializers.IntegerField()
    at = serializers.DateTimeField()
    action = serializers.CharField()
    actor = AuditActor(allow_null=True)
    conversation_id = serializers.UUIDField(allow_null=True)
    target = serializers.CharField(allow_blank=True)
    data = serializers.DictField()  # type: ignore[assignment]  # a declared field: DRF pops it, .data stays


class AuditPage(serializers.Serializer):
    entries = AuditEntry(many=True)
    next_before = serializers.IntegerField(allow_null=True, help_text="the next page's `before`; null: the last")


webhook_list = extend_schema_view(
    get=extend_schema(
        tags=["webhooks"], parameters=[WORKSPACE_ID], responses={200: Webhook(many=True), **OWNER_ERRORS}
    ),
    post=extend_schema(
        summary="Create a webhook; the answer carries its signing secret, once",
        tags=["webhooks"],
        parameters=[WORKSPACE_ID],
        request=WebhookCreate,
        responses={201: WebhookWithSecret, **BODY_ERRORS, **OWNER_ERRORS, 409: CONFLICT},
    ),
)
webhook_detail = extend_schema_view(
    get=extend_schema(
        tags=["webhooks"], parameters=[WORKSPACE_ID, WEBHOOK_ID], responses={200: Webhook, **OWNER_ERRORS}
    ),
    patch=extend_schema(
        tags=["webhooks"],
        parameters=[WORKSPACE_ID, WEBHOOK_ID],
        request=WebhookUpdate,
        responses={200: Webhook, **BODY_ERRORS, **OWNER_ERRORS},
    ),
    delete=extend_schema(
        tags=["webhooks"], parameters=[WORKSPACE_ID, WEBHOOK_ID], responses={204: NO_CONTENT, **OWNER_ERRORS}
    ),
)
webhook_rotate = extend_schema_view(
    post=extend_schema(
        summary="A new signing secret; the old one keeps signing for an overlap",
        tags=["webhooks"],
        parameters=[WORKSPACE_ID, WEBHOOK_ID],
        request=None,
        responses={200: WebhookRotated, **OWNER_ERRORS},
    )
)
webhook_deliveries = extend_schema_view(
    get=extend_schema(
        summary="The delivery log, newest first",
        tags=["webhooks"],
        parameters=[
            WORKSPACE_ID,
            WEBHOOK_ID,
            OpenApiParameter("limit", int, description=f"1-{DELIVERIES_PAGE_MAX}, default 50"),
            OpenApiParameter("status", str, enum=WebhookDelivery.Status.values),
        ],
        responses={200: Delivery(many=True), 400: BAD, **OWNER_ERRORS},
    )
)
webhook_redeliver = extend_schema_view(
    post=extend_schema(
        summary="Send a delivery again (same webhook-id)",
        tags=["webhooks"],
        parameters=[WORKSPACE_ID, WEBHOOK_ID, DELIVERY_ID],
        request=None,
        responses={202: Delivery, **OWNER_ERRORS, 409: CONFLICT},
    )
)
workspace_analytics = extend_schema_view(
    get=extend_schema(
        summary="Usage figures of a workspace, per day or week (owners)",
        tags=["analytics"],
        parameters=[
            WORKSPACE_ID,
            OpenApiParameter(
                "from",
                OpenApiTypes.DATE,
                description=f"first UTC day; default {settings.ANALYTICS_DEFAULT_DAYS} days before `to`",
            ),
            OpenApiParameter("to", OpenApiTypes.DATE, description="last UTC day (inclusive); default today"),
            OpenApiParameter("granularity", str, enum=list(GRANULARITIES), description="default day"),
            OpenApiParameter(
                "format", str, enum=["json", "csv"], description="csv: the series as a CSV file (tiers with CSV export)"
            ),
        ],
        description=f"`from` ≤ `to`, at most {settings.ANALYTICS_MAX_DAYS} days.",
        responses={
            (200, "application/json"): AnalyticsReport,
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="one row per bucket"),
            400: BAD,
            **OWNER_ERRORS,
        },
    )
)
workspace_sla = extend_schema_view(
    get=extend_schema(
        summary="A month's SLA report (owners of enterprise workspaces)",
        tags=["analytics"],
        parameters=[
            WORKSPACE_ID,
            OpenApiParameter("month", str, pattern=r"^\d{4}-\d{2}$", description="YYYY-MM; default this month (UTC)"),
        ],
        responses={200: SlaReport, 400: BAD, **OWNER_ERRORS},
    )
)
workspace_audit = extend_schema_view(
    get=extend_schema(
        summary="The workspace's audit log, newest first (owners)",
        tags=["audit"],
        parameters=[
            WORKSPACE_ID,
            OpenApiParameter("action", str, description="exact action name"),
            OpenApiParameter("from", OpenApiTypes.DATETIME, description="RFC 3339; from <= at"),
            OpenApiParameter("to", OpenApiTypes.DATETIME, description="RFC 3339; at < to"),
            OpenApiParameter("before", int, description="an entry id: the page after it (the previous `next_before`)"),
            OpenApiParameter("limit", int, description=f"1-{PAGE_MAX}, default {PAGE_DEFAULT}"),
        ],
        responses={200: AuditPage, 400: BAD_REQUEST, **OWNER_ERRORS, 404: NOT_FOUND},
    )
)

workspace_export = extend_schema_view(
    get=extend_schema(
        summary="The workspace's archive as one streamed JSON document (owners; pro and enterprise)",
        tags=["export"],
        parameters=[WORKSPACE_ID],
        description=(
            "`chat-export/1`: the workspace, its members and the conversations the caller may see with their"
            ' members and events (docs/operations.md "Workspace export"). One export per workspace at a time'
            " (409) and a budget per hour (429), both with Retry-After."
        ),
        responses={
            (200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT, description="sent as an attachment"),
            **OWNER_ERRORS,
            409: OpenApiResponse(ERROR, description="another export of this workspace is running"),
            429: OpenApiResponse(ERROR, description="the workspace's exports per hour are spent"),
            503: OpenApiResponse(ERROR, description="the limits cannot be checked (Redis unreachable): refused"),
        },
    )
)
