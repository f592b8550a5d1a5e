from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from monitoring.models import RunEventRecord


@admin.register(RunEventRecord)
class RunEventRecordAdmin(admin.ModelAdmin):
    list_display = (
        "run_id",
        "complete",
        "missing",
        "terminal_event",
        "terminal_count",
        "event_count",
        "agent_started_at",
        "agent_completed_at",
    )
    list_filter = ("terminal_event",)
    search_fields = ("run_id", "conversation_id")
    readonly_fields = [f.name for f in RunEventRecord._meta.fields]

    @admin.display(boolean=True)
    def complete(self, obj: RunEventRecord) -> bool:
        return obj.complete

    @admin.display(description="Missing critical events")
    def missing(self, obj: RunEventRecord) -> str:
        return ", ".join(obj.missing_critical) or "-"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
