"""The browser pages: the conversation list and the chat view (static JS, no build step)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from chat import selectors


@login_required
def index(request: HttpRequest) -> HttpResponse:
    rows = selectors.conversations_for_user(user_id=int(request.user.pk or 0))
    return render(request, "chat/index.html", {"memberships": rows})


@login_required
def conversation(request: HttpRequest, conversation_id: str) -> HttpResponse:
    try:
        access = selectors.conversation_for_member(user_id=int(request.user.pk or 0), conversation_id=conversation_id)
    except selectors.NotFound as exc:
        raise Http404("conversation not found") from exc
    return render(request, "chat/conversation.html", {"access": access})
