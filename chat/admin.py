"""Staff views of everything that happened. The event log is read-only: it is history, and every
change to a conversation goes through a service that appends to it."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from chat import admin_display
from chat.models import (
    Conversation,
    ConversationMember,
    Event,
    LoginLockout,
    Message,
    MessageFeedback,
    Notification,
    User,
    Workspace,
    WorkspaceMember,
)
from chat.services import login_guard
from chat.services.accounts import user_deactivate
from chat.services.conversation_admin import conversation_restore_by_staff
from chat.services.conversations import (
    conversation_member_remove_by_staff,
    conversation_member_set_by_staff,
    workspace_member_remove_by_staff,
    workspace_member_set_by_staff,
)


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ("username", "email", "tier", "is_active", "is_staff", "date_joined")
    list_filter = ("tier", "is_active", "is_staff")
    search_fields = ("username", "email")
    fieldsets = (*(BaseUserAdmin.fieldsets or ()), ("Subscription", {"fields": ("tier",)}))
    actions = ["deactivate"]

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if change and "is_active" in form.changed_data and not obj.is_active:
            user_deactivate(user_id=obj.id)  # same as the action: sockets closed, tokens revoked

    @admin.action(description="Deactivate and disconnect selected users")
    def deactivate(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        for user in queryset:
            user_deactivate(user_id=user.id)
        messages.success(request, f"Deactivated {queryset.count()} user(s); their sockets were closed.")


class WorkspaceMemberInline(admin.TabularInline):
    model = WorkspaceMember
    extra = 0
    autocomplete_fields = ("user",)


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ("name", "personal_for", "created_at")
    search_fields = ("name",)
    inlines = [WorkspaceMemberInline]

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is not WorkspaceMember:
            super().save_formset(request, form, formset, change)
            return
        members = formset.save(commit=False)
        for member in formset.deleted_objects:
            workspace_member_remove_by_staff(workspace=form.instance, user_id=member.user_id)
        for member in members:
            workspace_member_set_by_staff(workspace=form.instance, user=member.user, role=member.role)


class ConversationMemberInline(admin.TabularInline):
    model = ConversationMember
    extra = 0
    autocomplete_fields = ("user",)
    readonly_fields = ("last_read_seq",)


class DeletedFilter(admin.SimpleListFilter):
    title = "deleted"
    parameter_name = "deleted"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "deleted (waiting for the purge)"), ("no", "live")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> QuerySet[Conversation]:
        if self.value() in ("yes", "no"):
            return queryset.filter(deleted_at__isnull=self.value() == "no")
        return queryset


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = (
        "title",
        "workspace",
        "agent",
        "visibility",
        "last_seq",
        "last_activity_at",
        "created_by",
        "created_at",
        "deleted_at",
    )
    list_filter = ("visibility", DeletedFilter, "agent", "created_at")
    search_fields = ("title", "id")
    # Visibility and deletion change through the services (members are told, sockets stop): read-only
    # here; a delete is undone with the action below.
    readonly_fields = (
        "id",
        "last_seq",
        "created_at",
        "last_activity_at",
        "visibility",
        "deleted_at",
        "deleted_by",
        "transcript",
    )
    inlines = [ConversationMemberInline]
    actions = ["restore"]

    @admin.action(description="Restore selected deleted conversations (before they are purged)")
    def restore(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        restored = sum(conversation_restore_by_staff(conversation_id=str(c.id)) for c in queryset)
        messages.success(request, f"Restored {restored} conversation(s).")

    class Media:
        # The transcript's lines and scroll box: a stylesheet, since the CSP refuses inline style attributes.
        css = {"all": ["chat/admin.css"]}

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        """Memberships change through the services, as everywhere else: the member is notified,
        a removed member's sockets stop receiving the conversation, a new role reaches them."""
        if formset.model is not ConversationMember:
            super().save_formset(request, form, formset, change)
            return
        members = formset.save(commit=False)
        for member in formset.deleted_objects:
            conversation_member_remove_by_staff(
                conversation_id=str(member.conversation_id), user_id=member.user_id, staff_id=int(request.user.pk or 0)
            )
        for member in members:
            conversation_member_set_by_staff(
                conversation_id=str(form.instance.id),
                user=member.user,
                role=member.role,
                staff_id=int(request.user.pk or 0),
            )

    @admin.display(description="Transcript")
    def transcript(self, obj: Conversation) -> str:
        # From the event log, as members saw it: the assistant's thinking, tool calls and approvals too.
        return admin_display.transcript(obj.id)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("short_text", "conversation", "author", "author_kind", "seq", "created_at")
    list_filter = ("author_kind", "created_at")
    search_fields = ("text", "client_msg_id", "conversation__title", "author__username")
    readonly_fields = [f.name for f in Message._meta.fields]

    @admin.display(description="Text")
    def short_text(self, obj: Message) -> str:
        return obj.text[:80]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("conversation", "seq", "type", "created_at", "run_id")
    list_filter = ("type", "created_at")
    search_fields = ("conversation__id", "conversation__title", "run_id")
    ordering = ("-created_at",)


@admin.register(MessageFeedback)
class MessageFeedbackAdmin(ReadOnlyAdmin):
    """What members said about the assistant's answers: read-only, as members gave it."""

    list_display = ("excerpt", "user", "rating", "comment", "created_at")
    list_filter = ("rating", "created_at")
    search_fields = ("comment", "user__username", "message__text")
    list_select_related = ("message", "user")
    ordering = ("-created_at",)

    @admin.display(description="Answer")
    def excerpt(self, obj: MessageFeedback) -> str:
        return obj.message.text[:80]


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdmin):
    list_display = ("user", "seq", "created_at")
    search_fields = ("user__username",)


class GuardedAdminAuthenticationForm(AdminAuthenticationForm):
    def get_invalid_login_error(self) -> ValidationError:
        # A login guard refusal says so (and when to come back) instead of "wrong username or password".
        return login_guard.refusal_error(self.request) or super().get_invalid_login_error()


# The admin's login checks passwords through the guarded backend like every login; this form words its
# refusals, and /admin/login/ (chat.views.admin_login) answers them 429 with Retry-After.
admin.site.login_form = GuardedAdminAuthenticationForm


class LockedNowFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("locked", "locked now"), ("counting", "counting failures")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[LoginLockout]) -> QuerySet[LoginLockout]:
        now = timezone.now()
        if self.value() == "locked":
            return queryset.filter(locked_until__gt=now)
        if self.value() == "counting":
            return queryset.exclude(locked_until__gt=now)
        return queryset


@admin.register(LoginLockout)
class LoginLockoutAdmin(admin.ModelAdmin):
    """Failed logins being counted and the current lockouts (chat/services/login_guard.py). Staff clear
    a key with the action; nothing here is edited by hand."""

    list_display = ("scope", "username", "ip", "locked_now", "locked_until", "failures", "lockouts", "updated_at")
    list_filter = (LockedNowFilter, "scope")
    search_fields = ("username", "ip")
    ordering = ("-locked_until", "-updated_at")
    actions = ["clear_lockouts"]

    @admin.display(boolean=True, description="Locked now")
    def locked_now(self, obj: LoginLockout) -> bool:
        return bool(obj.locked_until and obj.locked_until > timezone.now())

    @admin.action(permissions=["delete"], description="Clear selected lockouts (forget their failures)")
    def clear_lockouts(self, request: HttpRequest, queryset: QuerySet[LoginLockout]) -> None:
        cleared = login_guard.clear(ids=list(queryset.values_list("id", flat=True)))
        messages.success(request, f"Cleared {cleared} login lockout(s).")

    def get_actions(self, request: HttpRequest) -> Any:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # clearing goes through the guard's service
        return actions

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
