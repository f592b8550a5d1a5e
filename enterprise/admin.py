"""Admin for the enterprise app. Webhooks: endpoints (never their secret) and deliveries with their attempt
log; staff turn endpoints on and off and redeliver through the services (enterprise/webhook_endpoints.py), so
the process caches and the rules (a fresh failure streak on enabling, no redelivery while pending) hold."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from chat.errors import NotFound, ServiceError
from enterprise import sla, webhook_endpoints
from enterprise.analytics import workspace_tier
from enterprise.models import AuditEntry, SlaMeasurement, WebhookAttempt, WebhookDelivery, WebhookEndpoint

# --- webhooks -------------------------------------------------------------------------------------------------


def _staff(request: HttpRequest) -> int:
    """The staff member acting: the audit entries of their webhook actions name them."""
    return int(request.user.pk)  # type: ignore[arg-type]


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ("url", "workspace", "enabled", "failure_streak", "failing_since", "disabled_reason", "created_at")
    list_filter = ("enabled",)
    search_fields = ("url", "workspace__name")
    # The secrets are not among the fields: staff never see them (the owner got them on create and rotate).
    fields = (
        "workspace",
        "url",
        "events",
        "enabled",
        "disabled_reason",
        "failure_streak",
        "failing_since",
        "previous_secret_expires_at",
        "created_by",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields
    actions = ("enable", "disable")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # an endpoint is created by an owner, who alone is shown its secret

    @admin.action(permissions=["change"], description="Enable selected endpoints (a fresh failure streak)")
    def enable(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            webhook_endpoints.endpoint_set_enabled(endpoint_id=endpoint.id, enabled=True, actor_id=_staff(request))
        messages.success(request, f"Enabled {queryset.count()} endpoint(s).")

    @admin.action(permissions=["change"], description="Disable selected endpoints")
    def disable(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            webhook_endpoints.endpoint_set_enabled(endpoint_id=endpoint.id, enabled=False, actor_id=_staff(request))
        messages.success(request, f"Disabled {queryset.count()} endpoint(s).")

    def delete_model(self, request: HttpRequest, obj: WebhookEndpoint) -> None:
        webhook_endpoints.endpoint_delete(endpoint=obj, actor_id=_staff(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            webhook_endpoints.endpoint_delete(endpoint=endpoint, actor_id=_staff(request))


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = ("at", "status_code", "duration_ms", "error")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "event_type",
        "endpoint",
        "status",
        "attempts",
        "last_status_code",
        "created_at",
        "next_attempt_at",
        "delivered_at",
    )
    list_filter = ("status", "event_type")
    search_fields = ("message_id", "endpoint__url")
    list_select_related = ("endpoint",)
    date_hierarchy = "created_at"
    fields = (
        "endpoint",
        "message_id",
        "event_type",
        "status",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "last_error",
        "created_at",
        "delivered_at",
        "payload",
    )
    readonly_fields = fields
    inlines = (WebhookAttemptInline,)
    actions = ("redeliver",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # deliveries are written with the events they report

    @admin.action(permissions=["change"], description="Redeliver selected deliveries (same webhook-id)")
    def redeliver(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        queued, refused = 0, []
        for delivery in queryset:
            try:
                webhook_endpoints.redeliver(
                    endpoint_id=delivery.endpoint_id, delivery_id=delivery.id, now=timezone.now()
                )
                queued += 1
            except (ServiceError, NotFound) as exc:
                refused.append(f"{delivery.id}: {getattr(exc, 'message', 'not found')}")
        if queued:
            messages.success(request, f"Queued {queued} delivery(ies) again.")
        for line in refused:
            messages.warning(request, line)


# --- audit log ------------------------------------------------------------------------------------------------


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """The audit log, read-only for everyone, superusers included: entries are append-only (the model
    and, on PostgreSQL, a trigger refuse change), so the admin offers no add, change or delete."""

    list_display = ("at", "actor_username", "action", "target", "workspace_id", "conversation_id", "ip")
    list_filter = ("action", ("actor", admin.RelatedOnlyFieldListFilter), "workspace_id")
    date_hierarchy = "at"
    search_fields = ("action", "actor_username", "target")
    fields = ("at", "actor", "actor_username", "action", "workspace_id", "conversation_id", "target", "data", "ip")
    readonly_fields = fields
    list_select_related = ("actor",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- SLA measurements -----------------------------------------------------------------------------------------


@admin.register(SlaMeasurement)
class SlaMeasurementAdmin(admin.ModelAdmin):
    """The stored SLA measurements, read-only (they are the record reports are made from), and above them the
    month's report of every enterprise workspace (enterprise/sla.py), ?month=YYYY-MM or this month."""

    change_list_template = "admin/enterprise/slameasurement/change_list.html"
    list_display = ("day", "objective", "workspace_id", "tier", "good", "total", "updated_at")
    list_filter = ("objective", "tier")
    date_hierarchy = "day"
    search_fields = ("workspace_id",)
    readonly_fields = ("workspace_id", "tier", "day", "objective", "good", "total", "created_at", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # `month` is the summary's, not a field to filter on: taken off the query before the changelist sees it.
        query = request.GET.copy()
        raw = query.pop("month", [""])[-1]
        request.GET = query  # type: ignore[assignment]  # a mutable copy where Django types the immutable one
        try:
            month = sla.parse_month(raw, today=timezone.now().date())
        except ServiceError as exc:
            messages.warning(request, exc.message)
            month = timezone.now().date().replace(day=1)
        reports = [
            {"workspace": ws, **sla.report(workspace_id=ws.id, tier=workspace_tier(ws.id), month=month)}
            for ws in sla.enterprise_workspaces()
        ]
        context = {**(extra_context or {}), "sla_month": month.strftime("%Y-%m"), "sla_reports": reports}
        return super().changelist_view(request, extra_context=context)
