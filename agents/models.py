"""Agent runs and their tool calls: rows with a status and a heartbeat, never tied to a socket."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    # Parked on a tool call that needs a person's approval: no runner holds it, no task waits for it.
    WAITING_APPROVAL = "waiting_approval", "Waiting for approval"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL_STATUSES = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class AgentRun(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey("chat.Conversation", on_delete=models.CASCADE, related_name="runs")
    trigger_message = models.ForeignKey(
        "chat.Message", null=True, on_delete=models.SET_NULL, related_name="triggered_runs"
    )
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    agent = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker_id = models.CharField(max_length=128, blank=True, default="")
    cancel_requested = models.BooleanField(default=False)
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    # The answer so far; flushed with every agent_delta so a joining client can be shown it.
    partial_text = models.TextField(blank=True, default="")
    # seq of the last agent_delta folded into partial_text, updated in the same row write, so a
    # reader gets a consistent (text, seq) pair without a second query.
    partial_seq = models.BigIntegerField(default=0)
    usage = models.JSONField(default=dict, blank=True)
    # The model that answered (the backend's: "offline" for the built-in agent), set when the run completes;
    # analytics price its usage by it (settings.AGENT_PRICES).
    model = models.CharField(max_length=100, blank=True, default="")
    # agent_started → the first agent_delta committed, in ms, stored with that delta (analytics' time to first
    # token: a measurement kept with the run, not recomputed from an event log that may be compacted).
    first_token_ms = models.IntegerField(null=True, blank=True)
    # Tracing (monitoring/tracing.py): the W3C traceparent a client's `send` carried (the run's trace
    # continues the caller's), the run's trace id once a traced leg ran, and that leg's root span as
    # a traceparent: a leg resumed after an approval, on any worker, is its child in the same trace.
    traceparent = models.CharField(max_length=55, blank=True, default="")
    trace_id = models.CharField(max_length=32, blank=True, default="")
    trace_context = models.CharField(max_length=55, blank=True, default="")
    # When its agent_delta events were deleted (chat/services/compaction.py): its terminal event carries the
    # whole answer. Null: not yet, or never (a run still going, or one that failed, whose deltas are its only
    # record of the text it streamed).
    deltas_compacted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["status", "created_at"]),
            models.Index(fields=["conversation", "status"]),
            # Workspace analytics read a workspace's conversations' runs by creation time.
            models.Index(fields=["conversation", "created_at"], name="agents_run_conv_created"),
            # The compaction's queue: ended runs whose deltas are still in the log, oldest end first.
            models.Index(
                fields=["finished_at"],
                condition=models.Q(status__in=["completed", "cancelled"], deltas_compacted_at__isnull=True),
                name="agents_run_compact_due",
            ),
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"run {self.id} ({self.status})"

    @property
    def duration_ms(self) -> int | None:
        if self.started_at and self.finished_at:
            return int((self.finished_at - self.started_at).total_seconds() * 1000)
        return None


class ToolCallStatus(models.TextChoices):
    RUNNING = "running", "Running"
    OK = "ok", "OK"
    ERROR = "error", "Error"


class ToolCall(models.Model):
    run = models.ForeignKey(AgentRun, on_delete=models.CASCADE, related_name="tool_calls")
    call_id = models.CharField(max_length=64)
    tool = models.CharField(max_length=64)
    arguments = models.JSONField(default=dict)
    result = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=ToolCallStatus.choices, default=ToolCallStatus.RUNNING)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.IntegerField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "call_id"], name="uniq_tool_call")]
        ordering = ["run", "started_at"]

    def __str__(self) -> str:
        return f"{self.tool} ({self.status})"


class ApproverRole(models.TextChoices):
    """Who may decide on a tool call: an owner of the conversation, or any member who can write."""

    OWNER = "owner", "Owner"
    MEMBER = "member", "Member"


class ApprovalStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    EXPIRED = "expired", "Expired"
    # The run was cancelled while it waited: nobody decided.
    CANCELLED = "cancelled", "Cancelled"


class Approval(models.Model):
    """A tool call that waits for a person, and the decision on it (who, when, what ran)."""

    run = models.ForeignKey(AgentRun, on_delete=models.CASCADE, related_name="approvals")
    call_id = models.CharField(max_length=64)
    tool = models.CharField(max_length=64)
    # As the agent asked; `approved_arguments` is what ran (the same, or as the approver edited them).
    arguments = models.JSONField(default=dict)
    reason = models.TextField(blank=True, default="")
    approver_role = models.CharField(max_length=16, choices=ApproverRole.choices)
    status = models.CharField(max_length=16, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING)
    requested_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept as written at the time: the record still says who decided after that account is gone.
    decided_by_username = models.CharField(max_length=150, blank=True, default="")
    approved_arguments = models.JSONField(null=True, blank=True)
    # What the agent backend needs to go on after this call (its conversation with the model so
    # far): the run resumes from here on any runner, after a restart too.
    backend_state = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "call_id"], name="uniq_approval_call")]
        indexes = [models.Index(fields=["status", "expires_at"])]
        ordering = ["-requested_at"]

    def __str__(self) -> str:
        return f"{self.tool} approval ({self.status})"

    def allows(self, role: str) -> bool:
        """May a member with `role` decide? Owners always; members when the tool asks for a member."""
        if role == "owner":
            return True
        return role == "member" and self.approver_role == ApproverRole.MEMBER
