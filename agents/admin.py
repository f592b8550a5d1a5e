from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from agents.models import AgentRun, Approval, RunStatus, ToolCall
from agents.services import run_request_cancel


class ToolCallInline(admin.TabularInline):
    model = ToolCall
    extra = 0
    can_delete = False
    readonly_fields = ("call_id", "tool", "arguments", "result", "status", "started_at", "duration_ms")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


# Decisions are a record: staff read them, nobody edits or deletes them here.
APPROVAL_FIELDS = (
    "call_id",
    "tool",
    "status",
    "approver_role",
    "reason",
    "arguments",
    "approved_arguments",
    "requested_at",
    "expires_at",
    "decided_at",
    "decided_by",
    "decided_by_username",
)


class ApprovalInline(admin.TabularInline):
    model = Approval
    extra = 0
    can_delete = False
    fields = APPROVAL_FIELDS
    readonly_fields = APPROVAL_FIELDS

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(AgentRun)
class AgentRunAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "conversation",
        "agent",
        "status",
        "created_at",
        "started_at",
        "finished_at",
        "error_code",
        "worker_id",
    )
    list_filter = ("status", "agent", "error_code")
    search_fields = ("id", "conversation__title", "conversation__id")
    readonly_fields = [f.name for f in AgentRun._meta.fields]
    inlines = [ToolCallInline, ApprovalInline]
    actions = ["cancel_runs"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Cancel selected queued, running or waiting runs")
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[AgentRun]) -> None:
        count = 0
        for run in queryset.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING_APPROVAL]):
            # The service publishes the events and stops the run's runner, as for the socket's cancel.
            run_request_cancel(
                run_id=str(run.id), by_user_id=int(request.user.pk or 0), by_username=request.user.get_username()
            )
            count += 1
        messages.success(request, f"Cancellation requested for {count} run(s).")


@admin.register(ToolCall)
class ToolCallAdmin(admin.ModelAdmin):
    list_display = ("tool", "run", "status", "started_at", "duration_ms")
    list_filter = ("tool", "status")
    search_fields = ("run__id", "call_id")
    readonly_fields = [f.name for f in ToolCall._meta.fields]


@admin.register(Approval)
class ApprovalAdmin(admin.ModelAdmin):
    """Every decision on a tool call: who, when, what was asked and what ran. Read-only."""

    list_display = ("tool", "run", "status", "decided_by_username", "requested_at", "decided_at")
    list_filter = ("status", "tool", "approver_role")
    search_fields = ("run__id", "call_id", "decided_by_username")
    readonly_fields = ("run", *APPROVAL_FIELDS, "backend_state")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
