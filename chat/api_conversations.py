"""REST for conversations (docs/protocol.md §7, §10): the sidebar list, create, detail and settings,
delete, members and their roles, joining an open conversation, the event log. Thin DRF views over
chat/services and the access-checking reads of chat/selectors.py and chat/conversation_directory.py.

A conversation the caller may not see is a 404 whether or not it exists; one they see but may not
change is a 403. The page calls these with its Django session and the X-CSRFToken header (DRF's
SessionAuthentication), other clients with a Bearer token."""

from __future__ import annotations

from typing import Any

from rest_framework import status
from rest_framework.exceptions import NotFound as DRFNotFound
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat import api_schema, selectors
from chat import conversation_directory as directory
from chat.errors import NotFound, ServiceError
from chat.models import ConversationMember
from chat.serializers import (
    ConversationCreateSerializer,
    ConversationUpdateSerializer,
    MemberAddSerializer,
    MemberRoleSerializer,
    OpenQuerySerializer,
    SidebarQuerySerializer,
)
from chat.services import conversation_admin
from chat.services import conversations as conversation_services
from chat.wire.frames import rfc3339

ERROR_STATUS = {"bad_request": 400, "forbidden": 403, "not_found": 404, "conflict": 409, "too_large": 413}
# Fields of PATCH /api/conversations/{id}/ that only an owner may change (`archived` is the caller's own).
OWNER_FIELDS = ("title", "visibility", "agent_mode")


def error_response(exc: ServiceError) -> Response:
    return Response({"error": {"code": exc.code, "message": exc.message}}, status=ERROR_STATUS.get(exc.code, 400))


def uid(request: Request) -> int:
    """The authenticated caller's id (every view here requires authentication)."""
    return int(request.user.pk)  # type: ignore[arg-type]


def valid(serializer: Any) -> dict[str, Any]:
    """The serializer's validated data, or a 400 with DRF's field errors."""
    if not serializer.is_valid():
        raise ValidationError(serializer.errors)
    return dict(serializer.validated_data)


def member_access(user_id: int, conversation_id: object) -> selectors.Access:
    try:
        return selectors.conversation_for_member(user_id=user_id, conversation_id=conversation_id)
    except NotFound as exc:
        raise DRFNotFound("conversation not found") from exc


def conversation_json(access: selectors.Access) -> dict[str, Any]:
    return {
        "id": access.conversation_id,
        "title": access.title,
        "workspace": access.workspace_id,
        "agent": access.agent or None,
        "agent_mode": access.agent_mode,
        "role": access.role,
        "head_seq": access.head_seq,
        "visibility": access.visibility,
    }


def sidebar_item_json(item: directory.SidebarItem) -> dict[str, Any]:
    """A list item (§7, §10): the conversation as the caller sees it, with their read state."""
    last = item.last_message
    last_message = None
    if last is not None:
        last_message = {
            "author": {"id": last.author_id, "username": last.author, "kind": last.kind},
            "preview": last.preview,
            "created_at": rfc3339(last.created_at),
            "deleted": last.deleted,
        }
    return {
        "id": item.id,
        "title": item.title,
        "workspace": item.workspace_id,
        "workspace_name": item.workspace_name,
        "agent": item.agent or None,
        "agent_mode": item.agent_mode,
        "role": item.role,
        "visibility": item.visibility,
        "head_seq": item.head_seq,
        "unread": item.unread,
        "last_read_seq": item.last_read_seq,
        "last_activity_at": rfc3339(item.last_activity_at),
        "last_message": last_message,
        "archived": item.archived,
    }


def member_json(member: ConversationMember) -> dict[str, Any]:
    return {"user": {"id": member.user_id, "username": member.user.username}, "role": member.role}


def path_user_id(raw: str) -> int:
    """A user id from the path: anything but a positive integer is simply not found."""
    if not raw.isdigit() or not 0 < int(raw) < 2**63:
        raise DRFNotFound("no such member")
    return int(raw)


@api_schema.conversation_list
class ConversationList(APIView):
    def get(self, request: Request) -> Response:
        query = valid(SidebarQuerySerializer(data=request.query_params))
        items = directory.sidebar(
            user_id=uid(request),
            q=query.get("q") or None,
            archived=query["archived"],
            workspace_id=query.get("workspace"),
            limit=query["limit"],
            before_activity=query.get("before"),
        )
        return Response([sidebar_item_json(i) for i in items])

    def post(self, request: Request) -> Response:
        body = valid(ConversationCreateSerializer(data=request.data))
        try:
            created = conversation_services.conversation_create(
                creator=request.user,  # type: ignore[arg-type]
                title=body["title"],
                workspace_id=body.get("workspace"),
                agent="assistant" if body["agent"] else "",
                agent_mode=body["agent_mode"],
                visibility=body["visibility"],
            )
        except ServiceError as exc:
            return error_response(exc)
        access = member_access(uid(request), created.conversation.id)
        return Response(conversation_json(access), status=status.HTTP_201_CREATED)


@api_schema.conversation_detail
class ConversationDetail(APIView):
    def get(self, request: Request, conversation_id: str) -> Response:
        return Response(conversation_json(member_access(uid(request), conversation_id)))

    def patch(self, request: Request, conversation_id: str) -> Response:
        """`title`, `visibility`, `agent_mode` (owner only: 403 for anyone else, checked before any
        change) and `archived` (the caller's own archive, any member)."""
        access = member_access(uid(request), conversation_id)
        body = valid(ConversationUpdateSerializer(data=request.data))
        if not access.is_owner and any(field in body for field in OWNER_FIELDS):
            message = "only a conversation owner may change its title, visibility or agent mode"
            return error_response(ServiceError("forbidden", message))
        conv = access.conversation_id
        try:
            if "title" in body or "visibility" in body:
                conversation_admin.conversation_settings_set(
                    conversation_id=conv,
                    actor_id=uid(request),
                    title=body.get("title"),
                    visibility=body.get("visibility"),
                )
            if "agent_mode" in body:
                conversation_services.conversation_agent_mode_set(
                    conversation_id=conv, actor_id=uid(request), agent_mode=body["agent_mode"]
                )
            if "archived" in body:
                conversation_admin.conversation_archive(
                    conversation_id=conv, user_id=uid(request), archived=body["archived"]
                )
        except ServiceError as exc:
            return error_response(exc)
        except NotFound as exc:  # deleted meanwhile
            raise DRFNotFound("conversation not found") from exc
        answer = conversation_json(member_access(uid(request), conv))
        answer["archived"] = body.get("archived", selectors.member_archived(conversation_id=conv, user_id=uid(request)))
        return Response(answer)

    def delete(self, request: Request, conversation_id: str) -> Response:
        """Soft delete, owner only (docs/protocol.md §7): gone for everybody at once."""
        access = member_access(uid(request), conversation_id)
        try:
            conversation_admin.conversation_delete(conversation_id=access.conversation_id, actor_id=uid(request))
        except ServiceError as exc:
            return error_response(exc)
        except NotFound as exc:
            raise DRFNotFound("conversation not found") from exc
        return Response(status=status.HTTP_204_NO_CONTENT)


@api_schema.conversation_members
class ConversationMembers(APIView):
    def get(self, request: Request, conversation_id: str) -> Response:
        access = member_access(uid(request), conversation_id)
        rows = selectors.conversation_members(conversation_id=access.conversation_id)
        return Response([member_json(m) for m in rows])

    def post(self, request: Request, conversation_id: str) -> Response:
        access = member_access(uid(request), conversation_id)
        body = valid(MemberAddSerializer(data=request.data))
        try:
            member = conversation_services.conversation_member_add(
                conversation_id=access.conversation_id,
                actor_id=uid(request),
                username=body["username"],
                role=body["role"],
            )
        except ServiceError as exc:
            return error_response(exc)
        return Response(member_json(member), status=status.HTTP_201_CREATED)


@api_schema.conversation_member
class ConversationMemberDetail(APIView):
    """One member: change their role (owner), remove them (owner) or leave (oneself)."""

    def patch(self, request: Request, conversation_id: str, user_id: str) -> Response:
        access = member_access(uid(request), conversation_id)
        target = path_user_id(user_id)
        body = valid(MemberRoleSerializer(data=request.data))
        try:
            member = conversation_admin.conversation_member_role_set(
                conversation_id=access.conversation_id, actor_id=uid(request), user_id=target, role=body["role"]
            )
        except ServiceError as exc:
            return error_response(exc)
        except NotFound as exc:
            raise DRFNotFound("conversation not found") from exc
        return Response(member_json(member))

    def delete(self, request: Request, conversation_id: str, user_id: str) -> Response:
        access = member_access(uid(request), conversation_id)
        target = path_user_id(user_id)
        try:
            conversation_services.conversation_member_remove(
                conversation_id=access.conversation_id, actor_id=uid(request), user_id=target
            )
        except ServiceError as exc:
            return error_response(exc)
        except NotFound as exc:
            raise DRFNotFound("conversation not found") from exc
        return Response(status=status.HTTP_204_NO_CONTENT)


@api_schema.conversation_join
class ConversationJoin(APIView):
    def post(self, request: Request, conversation_id: str) -> Response:
        """Join an open conversation of one of the caller's workspaces; 404 for anything else."""
        try:
            access = conversation_admin.conversation_join(conversation_id=conversation_id, user_id=uid(request))
        except ServiceError as exc:
            return error_response(exc)
        except NotFound as exc:
            raise DRFNotFound("conversation not found") from exc
        return Response(conversation_json(access))


@api_schema.workspace_conversations
class WorkspaceConversations(APIView):
    def get(self, request: Request, workspace_id: str) -> Response:
        """The open conversations of the workspace the caller can join (not those they are in)."""
        query = valid(OpenQuerySerializer(data=request.query_params))
        try:
            rows = directory.open_conversations(
                user_id=uid(request), workspace_id=workspace_id, q=query.get("q") or None
            )
        except NotFound as exc:
            raise DRFNotFound("workspace not found") from exc
        return Response(
            [
                {
                    "id": c.id,
                    "title": c.title,
                    "workspace": c.workspace_id,
                    "agent": c.agent or None,
                    "members": c.members,
                    "last_activity_at": rfc3339(c.last_activity_at),
                }
                for c in rows
            ]
        )
