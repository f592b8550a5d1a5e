"""Workspaces, conversations, messages and the per-conversation event log."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AbstractUser
from django.db import models


class Tier(models.TextChoices):
    FREE = "free", "Free"
    PRO = "pro", "Pro"
    ENTERPRISE = "enterprise", "Enterprise"


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"


class User(AbstractUser):
    tier = models.CharField(max_length=16, choices=Tier.choices, default=Tier.FREE)
    # Last per-user notification seq handed out; bumped under a row lock like Conversation.last_seq.
    notification_seq = models.BigIntegerField(default=0)


class Workspace(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    # A user's personal workspace is where conversations go when the client names none.
    personal_for = models.OneToOneField(
        User, null=True, blank=True, on_delete=models.CASCADE, related_name="personal_workspace"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class WorkspaceMember(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="workspace_memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    joined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "user"], name="uniq_workspace_member")]

    def __str__(self) -> str:
        return f"{self.user} in {self.workspace} ({self.role})"


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200)
    # Name of the agent that answers in this conversation; blank means people only.
    agent = models.CharField(max_length=64, blank=True, default="")
    created_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # Highest seq handed out. The next event takes last_seq + 1 under a row lock of this
    # conversation in the same transaction as its insert, so seqs commit in order with no holes.
    last_seq = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return self.title


class ConversationMember(models.Model):
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="conversation_memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    last_read_seq = models.BigIntegerField(default=0)
    joined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["conversation", "user"], name="uniq_conversation_member")]
        indexes = [models.Index(fields=["user", "conversation"])]

    def __str__(self) -> str:
        return f"{self.user} in {self.conversation_id} ({self.role})"


class AuthorKind(models.TextChoices):
    USER = "user", "User"
    AGENT = "agent", "Agent"


class Message(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    author = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    author_kind = models.CharField(max_length=8, choices=AuthorKind.choices, default=AuthorKind.USER)
    # The sender's idempotency key, unique per (conversation, author); empty for agent answers.
    client_msg_id = models.CharField(max_length=64, blank=True, default="")
    text = models.TextField()
    run = models.ForeignKey("agents.AgentRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    seq = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "author", "client_msg_id"],
                condition=~models.Q(client_msg_id=""),
                name="uniq_message_idempotency_key",
            )
        ]
        ordering = ["conversation", "seq"]

    def __str__(self) -> str:
        return f"{self.author_kind}: {self.text[:40]}"


class Event(models.Model):
    """One durable conversation event: the log every client replays from (docs/protocol.md §4)."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="events")
    seq = models.BigIntegerField()
    type = models.CharField(max_length=32)
    data = models.JSONField()
    created_at = models.DateTimeField()
    # Set on agent events so a finished run's agent_delta rows can be compacted.
    run_id = models.UUIDField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["conversation", "seq"], name="uniq_event_seq")]
        indexes = [models.Index(fields=["run_id", "type"])]
        ordering = ["conversation", "seq"]

    def __str__(self) -> str:
        return f"{self.conversation_id}#{self.seq} {self.type}"


class Notification(models.Model):
    """A user event (docs/protocol.md §2), replayed by `sync_notifications`."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="notifications")
    seq = models.BigIntegerField()
    data = models.JSONField()
    created_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "seq"], name="uniq_notification_seq")]
        ordering = ["user", "seq"]
