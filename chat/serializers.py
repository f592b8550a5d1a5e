"""Request validation for the REST API: every field typed and bounded."""

from __future__ import annotations

from rest_framework import serializers

from chat.models import AgentMode, Role, Visibility


class ConversationCreateSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=200, allow_blank=False, trim_whitespace=True)
    workspace = serializers.UUIDField(required=False, allow_null=True)
    agent = serializers.BooleanField(required=False, default=True)
    agent_mode = serializers.ChoiceField(choices=AgentMode.values, required=False, default=AgentMode.AUTO)
    visibility = serializers.ChoiceField(choices=Visibility.values, required=False, default=Visibility.PRIVATE)


class MemberAddSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=[Role.MEMBER, Role.VIEWER])


class EventsQuerySerializer(serializers.Serializer):
    before_seq = serializers.IntegerField(required=False, min_value=1)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=100, default=50)


class WorkspaceCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, allow_blank=False, trim_whitespace=True)


class ConversationUpdateSerializer(serializers.Serializer):
    """PATCH /api/conversations/{id}/: any of these, at least one. `archived` is the caller's own."""

    agent_mode = serializers.ChoiceField(choices=AgentMode.values, required=False)
    title = serializers.CharField(max_length=200, allow_blank=False, trim_whitespace=True, required=False)
    visibility = serializers.ChoiceField(choices=Visibility.values, required=False)
    archived = serializers.BooleanField(required=False)

    def validate(self, attrs: dict[str, object]) -> dict[str, object]:
        if not attrs:
            raise serializers.ValidationError("give at least one of agent_mode, title, visibility, archived")
        return attrs


class MemberRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.values)


class SidebarQuerySerializer(serializers.Serializer):
    """GET /api/conversations/'s query: ?q=&archived=1&workspace=<id>&limit=&before=<last_activity_at>."""

    q = serializers.CharField(max_length=100, required=False, allow_blank=True, trim_whitespace=True)
    archived = serializers.BooleanField(required=False, default=False)
    workspace = serializers.UUIDField(required=False)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=200, default=50)
    before = serializers.DateTimeField(required=False)


class OpenQuerySerializer(serializers.Serializer):
    q = serializers.CharField(max_length=100, required=False, allow_blank=True, trim_whitespace=True)
