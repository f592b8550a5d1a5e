"""Per-run record of the five critical agent events, and counts of events by type."""

from __future__ import annotations

from django.db import models

CRITICAL_EVENTS = ("agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed")
TERMINAL_EVENTS = ("agent_completed", "agent_failed", "agent_cancelled")


class RunEventRecord(models.Model):
    """When each critical event of a run was first emitted (null: never)."""

    run_id = models.UUIDField(primary_key=True)
    conversation_id = models.UUIDField()
    agent_started_at = models.DateTimeField(null=True, blank=True)
    agent_thinking_at = models.DateTimeField(null=True, blank=True)
    tool_executing_at = models.DateTimeField(null=True, blank=True)
    tool_completed_at = models.DateTimeField(null=True, blank=True)
    agent_completed_at = models.DateTimeField(null=True, blank=True)
    terminal_event = models.CharField(max_length=32, blank=True, default="")
    terminal_count = models.IntegerField(default=0)
    event_count = models.IntegerField(default=0)

    class Meta:
        ordering = ["-agent_started_at"]

    @property
    def missing_critical(self) -> list[str]:
        return [name for name in CRITICAL_EVENTS if getattr(self, f"{name}_at") is None]

    @property
    def complete(self) -> bool:
        return not self.missing_critical
