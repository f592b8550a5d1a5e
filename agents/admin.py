"""Runs, tool calls and approvals for staff: a run's page reads like what happened, in order
(its event timeline with offsets from the start, its tool calls and approvals, its trace id)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from agents.models import AgentRun, Approval, RunStatus, ToolCall, ToolCallStatus
from agents.services import run_request_cancel
from agents.tool_results import bound_result
from chat.admin_display import ms, ms_between, snippet, timeline


def _json(value: Any) -> SafeString:
    return format_html('<pre class="admin-json">{}</pre>', json.dumps(value, indent=2, ensure_ascii=False, default=str))


class ReadOnlyInline(admin.TabularInline):
    """A record of what happened: shown, never added to, changed or deleted here."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ToolCallInline(ReadOnlyInline):
    model = ToolCall
    fields = ("call_id", "tool", "status", "call_arguments", "outcome", "started_at", "duration")
    readonly_fields = fields

    @admin.display(description="Arguments")
    def call_arguments(self, obj: ToolCall) -> SafeString:
        return _json(obj.arguments)

    @admin.display(description="Result or error")
    def outcome(self, obj: ToolCall) -> SafeString | str:
        if obj.status == ToolCallStatus.RUNNING:
            return "(running)"
        result = obj.result
        if obj.status == ToolCallStatus.ERROR and isinstance(result, dict) and "error" in result:
            return format_html('<span class="admin-error">{}</span>', snippet(result["error"]))
        return _json(bound_result(result))  # a screenful in the inline, as the event carries it

    @admin.display(description="Duration", ordering="duration_ms")
    def duration(self, obj: ToolCall) -> str:
        return ms(obj.duration_ms)


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


class ApprovalInline(ReadOnlyInline):
    model = Approval
    fields = (*APPROVAL_FIELDS, "waited")
    readonly_fields = fields

    @admin.display(description="Waited")
    def waited(self, obj: Approval) -> str:
        return ms_between(obj.requested_at, obj.decided_at)


@admin.register(AgentRun)
class AgentRunAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "conversation",
        "agent",
        "status",
        "created_at",
        "queue_wait",
        "duration",
        "error_code",
    )
    list_filter = ("status", "agent", "error_code")
    # A trace id pasted from a tracing backend finds its run (exact match).
    search_fields = ("id", "conversation__title", "conversation__id", "=trace_id")
    readonly_fields = [*(f.name for f in AgentRun._meta.fields), "queue_wait", "duration", "event_timeline"]
    fieldsets = (
        (None, {"fields": ("id", "conversation", "trigger_message", "requested_by", "agent", "status")}),
        (
            "Timing",
            {"fields": ("created_at", "started_at", "finished_at", "heartbeat_at", "queue_wait", "duration")},
        ),
        ("Event timeline", {"fields": ("event_timeline",)}),
        ("Outcome", {"fields": ("error_code", "error_message", "partial_text", "partial_seq", "usage")}),
        ("Trace", {"fields": ("trace_id", "traceparent", "trace_context")}),
        ("Runner", {"fields": ("worker_id", "cancel_requested", "cancelled_by")}),
    )
    inlines = [ToolCallInline, ApprovalInline]
    actions = ["cancel_runs"]

    class Media:
        css = {"all": ["chat/admin.css"]}  # the timeline's table; the CSP refuses inline style

    @admin.display(description="Queue wait")
    def queue_wait(self, obj: AgentRun) -> str:
        return ms_between(obj.created_at, obj.started_at)

    @admin.display(description="Duration")
    def duration(self, obj: AgentRun) -> str:
        return ms(obj.duration_ms)

    @admin.display(description="Events (offset from the run's start)")
    def event_timeline(self, obj: AgentRun) -> SafeString:
        return timeline(obj.id)

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
    list_display = ("tool", "run", "status", "started_at", "duration")
    list_filter = ("tool", "status")
    search_fields = ("run__id", "call_id")
    readonly_fields = [f.name for f in ToolCall._meta.fields]

    @admin.display(description="Duration", ordering="duration_ms")
    def duration(self, obj: ToolCall) -> str:
        return ms(obj.duration_ms)


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
