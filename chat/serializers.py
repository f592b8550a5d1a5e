"""Request validation for the REST API: every field typed and bounded."""

from __future__ import annotations

from rest_framework import serializers

from chat.models import AgentMode, Role


class ConversationCreateSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=200, allow_blank=False, trim_whitespace=True)
    workspace = serializers.UUIDField(required=False, allow_null=True)
    agent = serializers.BooleanField(required=False, default=True)
    agent_mode = serializers.ChoiceField(choices=AgentMode.values, required=False, default=AgentMode.AUTO)


class MemberAddSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=[Role.MEMBER, Role.VIEWER])


class EventsQuerySerializer(serializers.Serializer):
    before_seq = serializers.IntegerField(required=False, min_value=1)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=100, default=50)


class WorkspaceCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, allow_blank=False, trim_whitespace=True)


class ConversationUpdateSerializer(serializers.Serializer):
    agent_mode = serializers.ChoiceField(choices=AgentMode.values)
