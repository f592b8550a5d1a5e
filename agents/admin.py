from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from agents.models import AgentRun, RunStatus, ToolCall
from agents.services import run_request_cancel


class ToolCallInline(admin.TabularInline):
    model = ToolCall
    extra = 0
    can_delete = False
    readonly_fields = ("call_id", "tool", "arguments", "result", "status", "started_at", "duration_ms")

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
    inlines = [ToolCallInline]
    actions = ["cancel_runs"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Cancel selected queued/running runs")
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[AgentRun]) -> None:
        count = 0
        for run in queryset.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]):
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
