"""The OpenAPI description of chat's REST views (drf-spectacular; served at /api/schema/, docs/protocol.md §7).

The views are plain APIViews whose bodies are read by services, so drf-spectacular cannot guess their
shapes: each view class carries one decorator from here (`@api_schema.workspace_list`) that declares its
request body, query and path parameters and every answer it gives. Declarations only: nothing here runs
on a request. The serializers below are documentation shapes, never used to validate.

Error bodies, as the views give them:
- `{"error": {"code", "message"}}`: a service's refusal (chat/errors.py codes), most 400/403/404/409s;
- `{"detail": "..."}`: DRF's own (no or a bad token 401, unknown route 404 raised by DRF, 415, 429);
- `{field: ["message", ...]}`: a DRF serializer's field errors (400).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers

from chat.serializers import (
    ConversationCreateSerializer,
    ConversationUpdateSerializer,
    MemberAddSerializer,
    MemberRoleSerializer,
    OpenQuerySerializer,
    SidebarQuerySerializer,
    WorkspaceCreateSerializer,
)


class RevocableJWTScheme(SimpleJWTScheme):
    """The Bearer scheme of chat.realtime.auth.RevocableJWTAuthentication (simplejwt's, plus revocation)."""

    target_class = "chat.realtime.auth.RevocableJWTAuthentication"
    name = "jwtAuth"


# --- error bodies (raw schemas: several views answer one status with more than one shape) ---------------
ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
DETAIL: dict[str, Any] = {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}
FIELD_ERRORS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {"type": "array", "items": {"type": "string"}},
}
# 400: a service's refusal, a serializer's field errors, or DRF's malformed-JSON detail.
BAD_REQUEST = OpenApiResponse({"anyOf": [ERROR, FIELD_ERRORS, DETAIL]}, description="malformed or invalid input")
# 404: a service's `not_found`, or DRF's NotFound for an id the caller may not see (the same for any id).
NOT_FOUND = OpenApiResponse(
    {"anyOf": [ERROR, DETAIL]}, description="not found, or not visible to the caller (the two answer alike)"
)
FORBIDDEN = OpenApiResponse({"anyOf": [ERROR, DETAIL]}, description="visible, but the caller's role does not allow it")
CONFLICT = OpenApiResponse(ERROR, description="conflicts with the current state")
TOO_LARGE = OpenApiResponse(ERROR, description="over the caller's tier's size limit (the message says which)")
UNAUTHENTICATED = OpenApiResponse(DETAIL, description="no credentials, or a bad, expired or revoked token")
UNSUPPORTED = OpenApiResponse(DETAIL, description="the body is not JSON (Content-Type)")
# Every authenticated route can answer these.
AUTH_ERRORS: dict[int, OpenApiResponse] = {401: UNAUTHENTICATED, 403: FORBIDDEN}
BODY_ERRORS: dict[int, OpenApiResponse] = {400: BAD_REQUEST, 415: UNSUPPORTED}
NO_CONTENT = OpenApiResponse(None, description="done; no body")


def uuid_path(name: str, what: str) -> OpenApiParameter:
    """An id in the path; a malformed one answers 404 exactly like a missing one."""
    return OpenApiParameter(name, OpenApiTypes.UUID, OpenApiParameter.PATH, description=f"the {what}'s id")


CONVERSATION_ID = uuid_path("conversation_id", "conversation")
WORKSPACE_ID = uuid_path("workspace_id", "workspace")
MESSAGE_ID = uuid_path("message_id", "message")
USER_ID = OpenApiParameter("user_id", OpenApiTypes.INT, OpenApiParameter.PATH, description="the member's user id")


# --- response shapes ---------------------------------------------------------------------------------------
class UserRef(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()


class Member(serializers.Serializer):
    user = UserRef()
    role = serializers.CharField()


class Workspace(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    role = serializers.CharField()


class Conversation(serializers.Serializer):
    id = serializers.UUIDField()
    title = serializers.CharField()
    workspace = serializers.UUIDField(allow_null=True)
    agent = serializers.CharField(allow_null=True)
    agent_mode = serializers.CharField()
    role = serializers.CharField()
    head_seq = serializers.IntegerField()
    visibility = serializers.CharField()


class ConversationUpdated(Conversation):
    archived = serializers.BooleanField(help_text="the caller's own archive flag")


class LastMessageAuthor(UserRef):
    id = serializers.IntegerField(allow_null=True)  # an agent's message has no user
    kind = serializers.CharField()


class LastMessage(serializers.Serializer):
    author = LastMessageAuthor()
    preview = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    deleted = serializers.BooleanField()


class SidebarItem(serializers.Serializer):
    id = serializers.UUIDField()
    title = serializers.CharField()
    workspace = serializers.UUIDField(allow_null=True)
    workspace_name = serializers.CharField(allow_null=True)
    agent = serializers.CharField(allow_null=True)
    agent_mode = serializers.CharField()
    role = serializers.CharField()
    visibility = serializers.CharField()
    head_seq = serializers.IntegerField()
    unread = serializers.IntegerField()
    last_read_seq = serializers.IntegerField()
    last_activity_at = serializers.DateTimeField()
    last_message = LastMessage(allow_null=True)
    archived = serializers.BooleanField()


class OpenConversation(serializers.Serializer):
    id = serializers.UUIDField()
    title = serializers.CharField()
    workspace = serializers.UUIDField(allow_null=True)
    agent = serializers.CharField(allow_null=True)
    members = serializers.IntegerField()
    last_activity_at = serializers.DateTimeField()


class TokenPairBody(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField()


class TokenPair(serializers.Serializer):
    access = serializers.CharField()
    refresh = serializers.CharField()


class RefreshBody(serializers.Serializer):
    refresh = serializers.CharField()


class AccessToken(serializers.Serializer):
    access = serializers.CharField()


LOGIN_LOCKED = OpenApiResponse(
    {
        "anyOf": [
            {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message", "retry_after"],
                        "properties": {
                            "code": {"type": "string", "enum": ["login_locked"]},
                            "message": {"type": "string"},
                            "retry_after": {"type": "integer"},
                        },
                    }
                },
            },
            DETAIL,
        ]
    },
    description="too many attempts from this address (the guard's lock, or the per-IP rate); see Retry-After",
)

# --- the views' declarations -------------------------------------------------------------------------------
token = extend_schema_view(
    post=extend_schema(
        summary="Get a token pair",
        description="JSON only; rate limited per IP. `access` lives 15 minutes by default, `refresh` 7 days.",
        tags=["auth"],
        auth=[],
        request=TokenPairBody,
        responses={200: TokenPair, **BODY_ERRORS, 401: UNAUTHENTICATED, 429: LOGIN_LOCKED},
    )
)
token_refresh = extend_schema_view(
    post=extend_schema(
        summary="A new access token",
        tags=["auth"],
        auth=[],
        request=RefreshBody,
        responses={200: AccessToken, **BODY_ERRORS, 401: UNAUTHENTICATED, 429: LOGIN_LOCKED},
    )
)
logout_all = extend_schema_view(
    post=extend_schema(
        summary="Log out everywhere: every token and session of the caller ends",
        tags=["auth"],
        request=None,
        responses={204: NO_CONTENT, **AUTH_ERRORS},
    )
)
workspace_list = extend_schema_view(
    get=extend_schema(
        summary="The caller's workspaces", tags=["workspaces"], responses={200: Workspace(many=True), **AUTH_ERRORS}
    ),
    post=extend_schema(
        summary="Create a workspace (the caller owns it)",
        tags=["workspaces"],
        request=WorkspaceCreateSerializer,
        responses={201: Workspace, **BODY_ERRORS, **AUTH_ERRORS},
    ),
)
workspace_members = extend_schema_view(
    get=extend_schema(
        summary="A workspace's members",
        tags=["workspaces"],
        parameters=[WORKSPACE_ID],
        responses={200: Member(many=True), **AUTH_ERRORS, 404: NOT_FOUND},
    ),
    post=extend_schema(
        summary="Add a member (owners)",
        tags=["workspaces"],
        parameters=[WORKSPACE_ID],
        request=MemberAddSerializer,
        responses={201: Member, **BODY_ERRORS, **AUTH_ERRORS, 404: NOT_FOUND, 409: CONFLICT},
    ),
)
conversation_list = extend_schema_view(
    get=extend_schema(
        summary="The caller's conversations (the sidebar), most recently active first",
        tags=["conversations"],
        parameters=[SidebarQuerySerializer],
        responses={200: SidebarItem(many=True), 400: BAD_REQUEST, **AUTH_ERRORS},
    ),
    post=extend_schema(
        summary="Create a conversation (the caller owns it)",
        tags=["conversations"],
        request=ConversationCreateSerializer,
        responses={201: Conversation, **BODY_ERRORS, **AUTH_ERRORS, 404: NOT_FOUND, 409: CONFLICT},
    ),
)
conversation_detail = extend_schema_view(
    get=extend_schema(
        summary="One conversation as the caller sees it",
        tags=["conversations"],
        parameters=[CONVERSATION_ID],
        responses={200: Conversation, **AUTH_ERRORS, 404: NOT_FOUND},
    ),
    patch=extend_schema(
        summary="Change title, visibility, agent mode (owners) or the caller's own archive flag",
        tags=["conversations"],
        parameters=[CONVERSATION_ID],
        request=ConversationUpdateSerializer,
        responses={200: ConversationUpdated, **BODY_ERRORS, **AUTH_ERRORS, 404: NOT_FOUND, 409: CONFLICT},
    ),
    delete=extend_schema(
        summary="Delete the conversation for everybody (owners)",
        tags=["conversations"],
        parameters=[CONVERSATION_ID],
        responses={204: NO_CONTENT, **AUTH_ERRORS, 404: NOT_FOUND},
    ),
)
conversation_members = extend_schema_view(
    get=extend_schema(
        summary="A conversation's members",
        tags=["conversations"],
        parameters=[CONVERSATION_ID],
        responses={200: Member(many=True), **AUTH_ERRORS, 404: NOT_FOUND},
    ),
    post=extend_schema(
        summary="Add a member (owners)",
        tags=["conversations"],
        parameters=[CONVERSATION_ID],
        request=MemberAddSerializer,
        responses={201: Member, **BODY_ERRORS, **AUTH_ERRORS, 404: NOT_FOUND, 409: CONFLICT},
    ),
)
conversation_member = extend_schema_view(
    patch=extend_schema(
        summary="Change a member's role (owners)",
        tags=["conversations"],
        parameters=[CONVERSATION_ID, USER_ID],
        request=MemberRoleSerializer,
        responses={200: Member, **BODY_ERRORS, **AUTH_ERRORS, 404: NOT_FOUND, 409: CONFLICT},
    ),
    delete=extend_schema(
        summary="Remove a member (owners), or leave (oneself)",
        tags=["conversations"],
        parameters=[CONVERSATION_ID, USER_ID],
        responses={204: NO_CONTENT, 400: BAD_REQUEST, **AUTH_ERRORS, 404: NOT_FOUND, 409: CONFLICT},
    ),
)
conversation_join = extend_schema_view(
    post=extend_schema(
        summary="Join an open conversation of one of the caller's workspaces",
        tags=["conversations"],
        parameters=[CONVERSATION_ID],
        request=None,
        responses={200: Conversation, 400: BAD_REQUEST, **AUTH_ERRORS, 404: NOT_FOUND, 409: CONFLICT},
    )
)
workspace_conversations = extend_schema_view(
    get=extend_schema(
        summary="Open conversations of a workspace the caller can join",
        tags=["workspaces"],
        parameters=[WORKSPACE_ID, OpenQuerySerializer],
        responses={200: OpenConversation(many=True), 400: BAD_REQUEST, **AUTH_ERRORS, 404: NOT_FOUND},
    )
)
