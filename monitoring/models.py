"""What the monitoring app keeps: a per-run record of the critical events, the alerts it raised and
who was told, and good/total counts per minute for the SLOs."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

CRITICAL_EVENTS = ("agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed")
TERMINAL_EVENTS = ("agent_completed", "agent_failed", "agent_cancelled")


def expected_missing(
    *, terminal: str, started: bool, thought: bool, tools_started: int, tools_completed: int, require_thinking: bool
) -> list[str]:
    """The critical events an ended run should have and lacks, for its shape: every run starts with
    agent_started; a completed one also thought (agent_thinking) and finished each tool it started.
    A failed or cancelled run may stop anywhere, mid-tool included, so it owes nothing more."""
    if not terminal:
        return []  # still running: nothing is owed yet (a run silent for long is stuck, not incomplete)
    missing = [] if started else ["agent_started"]
    if terminal == "agent_completed":
        if require_thinking and not thought:
            missing.append("agent_thinking")
        if tools_completed < tools_started:
            missing.append("tool_completed")
    return missing


class RunEventRecord(models.Model):
    """One row per run, upserted by every event of the run in one statement (event_monitor.record_event);
    the sweep's audit against the event log fills in `missing`, `problems`, `ttfe_ms`, tier and user."""

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
    first_event_at = models.DateTimeField(null=True, blank=True)
    last_event_at = models.DateTimeField(null=True, blank=True)
    tools_started = models.IntegerField(default=0)
    tools_completed = models.IntegerField(default=0)
    # Filled in by the sweep.
    audited_events = models.IntegerField(default=0, help_text="event_count when the log was last audited")
    missing = models.JSONField(default=list, blank=True, help_text="critical events owed and not in the log")
    problems = models.JSONField(default=list, blank=True, help_text="order and terminal problems found in the log")
    ttfe_ms = models.IntegerField(null=True, blank=True, help_text="time to first event")
    tier = models.CharField(max_length=16, blank=True, default="")
    username = models.CharField(max_length=150, blank=True, default="")
    slo_counted = models.BooleanField(default=False)

    class Meta:
        ordering = ["-agent_started_at"]
        indexes = [
            models.Index(fields=["terminal_event", "last_event_at"], name="runrec_open_idx"),
            models.Index(fields=["ttfe_ms"], name="runrec_ttfe_idx", condition=Q(ttfe_ms__isnull=True)),
        ]

    @property
    def audited(self) -> bool:
        return bool(self.terminal_event) and self.audited_events >= self.event_count

    @property
    def missing_critical(self) -> list[str]:
        """What the run owes: the audit's answer once it ran, else the counts' (the same unless the
        log lost an event after it was recorded, which only the audit sees)."""
        if self.audited_events and self.terminal_event:
            return list(self.missing)
        return expected_missing(
            terminal=self.terminal_event,
            started=self.agent_started_at is not None,
            thought=self.agent_thinking_at is not None,
            tools_started=self.tools_started,
            tools_completed=self.tools_completed,
            # monitoring.config's option, read here without it: models sit below the app's config.
            require_thinking=bool((getattr(settings, "MONITORING", None) or {}).get("require_thinking", True)),
        )

    @property
    def complete(self) -> bool:
        """Ended with exactly one terminal event, owing nothing and with nothing out of order."""
        return (
            bool(self.terminal_event) and self.terminal_count == 1 and not self.missing_critical and not self.problems
        )


class Severity(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


SEVERITY_RANK: dict[str, int] = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


class Alert(models.Model):
    """Something staff should look at. One open alert per (kind, subject): raising it again while it
    is open counts it and moves `last_seen` (monitoring.alerts.raise_alert)."""

    kind = models.CharField(max_length=64)
    severity = models.CharField(max_length=16, choices=Severity.choices, default=Severity.WARNING)
    subject = models.CharField(max_length=200, help_text="what it is about: a run id, a series, a tier")
    message = models.TextField()
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    count = models.IntegerField(default=1)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_seen"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "subject"], condition=Q(resolved_at__isnull=True), name="uniq_open_alert"
            )
        ]
        indexes = [models.Index(fields=["kind", "subject"], name="alert_kind_subject_idx")]

    def __str__(self) -> str:
        return f"[{self.severity}] {self.kind} {self.subject}"


class AlertDelivery(models.Model):
    """One alert told to one sink: the row is the claim, so each sink gets each alert once."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    sink = models.CharField(max_length=32)
    delivered_at = models.DateTimeField(null=True, blank=True)
    attempts = models.IntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["alert", "sink"], name="uniq_alert_sink")]


class SloBucket(models.Model):
    """Good and total events of one SLI for one tier in one minute, summed over every process."""

    sli = models.CharField(max_length=32)
    tier = models.CharField(max_length=16)
    minute = models.DateTimeField()
    good = models.BigIntegerField(default=0)
    total = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["sli", "tier", "minute"], name="uniq_slo_bucket")]
        indexes = [models.Index(fields=["minute"], name="slo_bucket_minute_idx")]
