from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from chat.admin_display import ms
from monitoring.alerts import resolve_alerts
from monitoring.models import Alert, AlertDelivery, RunEventRecord


class VerdictFilter(admin.SimpleListFilter):
    """Runs by what the monitor found: the same sets as monitoring.selectors.run_record_counts."""

    title = "verdict"
    parameter_name = "verdict"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [
            ("problems", "Missing events or out of order"),
            ("complete", "Complete"),
            ("running", "Running"),
            ("unaudited", "Ended, not audited yet"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[RunEventRecord]) -> QuerySet[RunEventRecord]:
        ok = Q(missing=[]) & Q(problems=[])
        audited = queryset.exclude(terminal_event="").filter(audited_events__gt=0)
        return {
            "problems": audited.exclude(ok),
            "complete": audited.filter(ok),
            "running": queryset.filter(terminal_event=""),
            "unaudited": queryset.exclude(terminal_event="").filter(audited_events=0),
        }.get(self.value() or "", queryset)


@admin.register(RunEventRecord)
class RunEventRecordAdmin(admin.ModelAdmin):
    list_display = (
        "run_id",
        "username",
        "tier",
        "complete",
        "missing_events",
        "problem_list",
        "terminal_event",
        "terminal_count",
        "tools",
        "event_count",
        "ttfe",
        "first_event_at",
        "last_event_at",
    )
    list_filter = (VerdictFilter, "terminal_event", "tier")
    search_fields = ("run_id", "conversation_id", "username")
    readonly_fields = [f.name for f in RunEventRecord._meta.fields]

    @admin.display(boolean=True)
    def complete(self, obj: RunEventRecord) -> bool | None:
        return obj.complete if obj.terminal_event else None  # a running run is neither

    @admin.display(description="Missing critical events")
    def missing_events(self, obj: RunEventRecord) -> str:
        return ", ".join(obj.missing_critical) or "-"

    @admin.display(description="Order problems")
    def problem_list(self, obj: RunEventRecord) -> str:
        return "; ".join(obj.problems) or "-"

    @admin.display(description="Tool calls (completed/started)")
    def tools(self, obj: RunEventRecord) -> str:
        return f"{obj.tools_completed}/{obj.tools_started}"

    @admin.display(description="Time to first event", ordering="ttfe_ms")
    def ttfe(self, obj: RunEventRecord) -> str:
        return "-" if obj.ttfe_ms is None or obj.ttfe_ms < 0 else ms(obj.ttfe_ms)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class OpenFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("open", "Open"), ("resolved", "Resolved")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Alert]) -> QuerySet[Alert]:
        if self.value() == "open":
            return queryset.filter(resolved_at__isnull=True)
        if self.value() == "resolved":
            return queryset.filter(resolved_at__isnull=False)
        return queryset


class DeliveryInline(admin.TabularInline):
    model = AlertDelivery
    extra = 0
    can_delete = False
    readonly_fields = ("sink", "delivered_at", "attempts", "last_error")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ("kind", "severity", "subject", "message", "count", "first_seen", "last_seen", "resolved_at")
    list_filter = (OpenFilter, "severity", "kind")
    search_fields = ("subject", "message")
    readonly_fields = [f.name for f in Alert._meta.fields]
    inlines = [DeliveryInline]
    actions = ["resolve"]

    @admin.action(description="Resolve the selected alerts")
    def resolve(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        done = resolve_alerts(queryset.values_list("id", flat=True))
        self.message_user(request, f"{done} alert(s) resolved.", messages.SUCCESS)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
