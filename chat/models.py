"""Workspaces, conversations, messages and the per-conversation event log."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils.crypto import salted_hmac


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
    # Bumped by log-out-everywhere and deactivation (chat/services/accounts.py): every token carries the
    # version it was minted under, and every Django session's auth hash includes it, so a bump ends both.
    token_version = models.PositiveIntegerField(default=0)
    # IANA zone the user's browser reported (e.g. "Europe/Paris"); blank means UTC. Agents answer
    # "what time is it" in it.
    time_zone = models.CharField(max_length=64, blank=True, default="")

    def _get_session_auth_hash(self, secret: str | None = None) -> str:
        # Django checks this hash on every request of a session (and channels at the socket's handshake);
        # folding the token version in makes log-out-everywhere end browser sessions as well. Version 0
        # keeps Django's own hash, so sessions opened before this field existed stay valid.
        if not self.token_version:
            return super()._get_session_auth_hash(secret=secret)  # type: ignore[misc]
        return salted_hmac(
            "chat.User.session_auth_hash",
            f"{self.password}:{self.token_version}",
            secret=secret,
            algorithm="sha256",
        ).hexdigest()


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


class AgentMode(models.TextChoices):
    # When the conversation's agent answers a human message (docs/protocol.md §8).
    AUTO = "auto", "Auto: every message while one human is a member, then only when mentioned"
    ALWAYS = "always", "Always"
    MENTION = "mention", "Only when mentioned"
    OFF = "off", "Off"


class Visibility(models.TextChoices):
    # Private: only invited members see it. Open: every member of its workspace can find and join it.
    PRIVATE = "private", "Private"
    OPEN = "open", "Open to the workspace"


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200)
    # Name of the agent that answers in this conversation; blank means people only.
    agent = models.CharField(max_length=64, blank=True, default="")
    agent_mode = models.CharField(max_length=8, choices=AgentMode.choices, default=AgentMode.AUTO)
    created_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # Highest seq handed out. The next event takes last_seq + 1 under a row lock of this
    # conversation in the same transaction as its insert, so seqs commit in order with no holes.
    last_seq = models.BigIntegerField(default=0)
    # Time of the newest event, set by the same UPDATE that hands out its seq: the sidebar orders by it.
    last_activity_at = models.DateTimeField(null=True, blank=True)
    visibility = models.CharField(max_length=8, choices=Visibility.choices, default=Visibility.PRIVATE)
    # Soft delete by an owner: hidden from every reader at once, purged after the retention period.
    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        indexes = [models.Index(fields=["workspace", "visibility"], name="chat_conv_ws_visibility")]

    def __str__(self) -> str:
        return self.title


class ConversationMember(models.Model):
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="conversation_memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    last_read_seq = models.BigIntegerField(default=0)
    joined_at = models.DateTimeField(auto_now_add=True)
    # The member's unsent composer text, shared by all their tabs and devices (docs/protocol.md §10).
    draft = models.TextField(blank=True, default="")
    draft_updated_at = models.DateTimeField(null=True, blank=True)
    # Archived by this member: out of their sidebar, not out of the conversation.
    archived_at = models.DateTimeField(null=True, blank=True)

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
    # Set by message_edited / message_deleted events; a deleted message's text is emptied.
    edited_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "author", "client_msg_id"],
                condition=~models.Q(client_msg_id=""),
                name="uniq_message_idempotency_key",
            )
        ]
        # Unread counts and the last message of each conversation read the newest seqs of a conversation.
        indexes = [models.Index(fields=["conversation", "seq"], name="chat_message_conv_seq")]
        ordering = ["conversation", "seq"]

    def __str__(self) -> str:
        return f"{self.author_kind}: {self.text[:40]}"


class MessageFeedback(models.Model):
    """A member's thumbs up or down on an agent's answer, with an optional comment; one per member."""

    class Rating(models.IntegerChoices):
        UP = 1, "Helpful"
        DOWN = -1, "Not helpful"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    rating = models.SmallIntegerField(choices=Rating.choices)
    comment = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "user"], name="uniq_message_feedback")]

    def __str__(self) -> str:
        return f"{self.get_rating_display()} on {self.message_id}"


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
    """A user event (docs/protocol.md §2, §9), replayed by `sync_notifications`; `data` is what the
    frame carries. The columns beside it route its delivery (chat/services/notifications.py)."""

    class Delivery(models.TextChoices):
        NONE = "none", "Off for this kind"
        PENDING = "pending", "Waiting for the notifications worker (held: due later)"
        DONE = "done", "Handed on (push: queued to every device; email: in a digest)"
        SKIPPED = "skipped", "Read before it was delivered, or nowhere to deliver it"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="notifications")
    seq = models.BigIntegerField()
    data = models.JSONField()
    created_at = models.DateTimeField()
    kind = models.CharField(max_length=32, blank=True, default="")
    priority = models.CharField(max_length=8, default="normal")
    conversation_id = models.UUIDField(null=True, blank=True)
    push_state = models.CharField(max_length=8, choices=Delivery.choices, default=Delivery.NONE)
    # Not before: now when created; the end of quiet hours, `muted_until` or a collapse window when held.
    push_due_at = models.DateTimeField(null=True, blank=True)
    pushed_at = models.DateTimeField(null=True, blank=True)
    email_state = models.CharField(max_length=8, choices=Delivery.choices, default=Delivery.NONE)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "seq"], name="uniq_notification_seq")]
        indexes = [
            # The worker's scans touch only what is still to deliver.
            models.Index(
                fields=["push_due_at"], condition=models.Q(push_state="pending"), name="notification_push_due"
            ),
            models.Index(fields=["user"], condition=models.Q(email_state="pending"), name="notification_email_due"),
            models.Index(
                fields=["user", "kind", "conversation_id", "pushed_at"],
                condition=models.Q(pushed_at__isnull=False),
                name="notification_pushed",
            ),
        ]
        ordering = ["user", "seq"]


class NotificationSettings(models.Model):
    """A user's notification preferences (docs/protocol.md §9) and their delivery bookkeeping. No
    row means every default; chat/services/notification_prefs.py validates and merges."""

    user = models.OneToOneField(User, primary_key=True, on_delete=models.CASCADE, related_name="notification_settings")
    # {"<kind>": {"in_app": bool, "push": bool, "email": bool}}: only what differs from the defaults.
    kinds = models.JSONField(default=dict, blank=True)
    quiet_start = models.TimeField(null=True, blank=True)
    quiet_end = models.TimeField(null=True, blank=True)
    quiet_timezone = models.CharField(max_length=64, blank=True, default="")
    muted_until = models.DateTimeField(null=True, blank=True)
    # Notifications with seq ≤ read_seq are read, on every device (POST /api/me/notifications/read/).
    read_seq = models.BigIntegerField(default=0)
    digest_sent_at = models.DateTimeField(null=True, blank=True)
    digest_failures = models.PositiveIntegerField(default=0)
    digest_retry_at = models.DateTimeField(null=True, blank=True)


class ConversationNotificationLevel(models.Model):
    """A user's level for one conversation; no row means `all`."""

    class Level(models.TextChoices):
        ALL = "all", "Everything"
        MENTIONS = "mentions", "Only mentions and approvals"
        NONE = "none", "Nothing"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="+")
    level = models.CharField(max_length=8, choices=Level.choices)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "conversation"], name="uniq_conversation_level")]


class PushSubscription(models.Model):
    """One browser's Web Push subscription (its PushSubscription JSON), per user and device."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="push_subscriptions")
    endpoint = models.TextField()
    p256dh = models.CharField(max_length=128)
    auth = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    last_success_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "endpoint"], name="uniq_push_subscription")]


class PushDelivery(models.Model):
    """One push message still to send to one device: retried with backoff until it is accepted, the
    device's subscription turns out dead (404/410: removed with its deliveries) or attempts run out."""

    subscription = models.ForeignKey(PushSubscription, on_delete=models.CASCADE, related_name="deliveries")
    payload = models.JSONField()
    urgency = models.CharField(max_length=8, default="normal")
    topic = models.CharField(max_length=32, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    due_at = models.DateTimeField()
    created_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["due_at"])]


class RunEndNote(models.Model):
    """A run that ended, for the notifications worker to decide on `agent_finished`: whether the
    user who started it had a socket subscribed to the conversation is known in Redis only, so it is
    looked up after commit; the row makes sure every ended run is looked at once."""

    run_id = models.UUIDField(primary_key=True)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="+")
    seq = models.BigIntegerField()
    status = models.CharField(max_length=16)
    preview = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField()


class LoginLockout(models.Model):
    """Failed logins of one scope key and its lock (chat/services/login_guard.py). Kept in PostgreSQL,
    which every login needs anyway, so the guard holds exactly across processes and never falls back
    to a weaker limit. A row whose `locked_until` is in the future is a current lockout."""

    class Scope(models.TextChoices):
        USER_IP = "user_ip", "username from one address"
        USER = "user", "username from any address"
        IP = "ip", "any username from one address"
        TOKEN_IP = "token_ip", "bad refresh tokens from one address"

    scope = models.CharField(max_length=16, choices=Scope.choices)
    username = models.CharField(max_length=150, blank=True, default="")  # as typed, casefolded
    ip = models.CharField(max_length=64, blank=True, default="")  # an IPv6 address counts as its /64
    # Attempts counted in the current window, including ones still being checked (reserved up front,
    # so concurrent guesses cannot all slip under the limit); a success gives its reservation back.
    failures = models.PositiveIntegerField(default=0)
    window_started_at = models.DateTimeField()
    lockouts = models.PositiveIntegerField(default=0)  # locks so far: each one lasts twice the one before
    locked_until = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "username", "ip"], name="uniq_login_lockout_key")]
        indexes = [models.Index(fields=["updated_at"]), models.Index(fields=["locked_until"])]

    def __str__(self) -> str:
        who = " from ".join(part for part in (self.username, self.ip) if part)
        return f"{self.get_scope_display()}: {who}"
