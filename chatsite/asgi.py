"""ASGI entry point: HTTP to Django, /ws/chat/ to the chat consumer, `agent-runs` to the run worker."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

if settings.SERVE_STATIC:
    # One-machine deployments (and `make run`) serve /static/ from the app itself, like runserver.
    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from agents.worker import AGENT_RUNS_CHANNEL, RunWorkerConsumer  # noqa: E402
from chat.consumers import ChatConsumer  # noqa: E402
from chat.realtime.auth import ChatAuthMiddleware  # noqa: E402

websocket_urlpatterns = [path("ws/chat/", ChatConsumer.as_asgi())]

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Origin, then session cookie or Bearer token (chat/realtime/auth.py). A foreign origin is
        # closed with 4403 per docs/protocol.md §1, which a handshake rejection could not express.
        "websocket": ChatAuthMiddleware(URLRouter(websocket_urlpatterns)),
        "channel": ChannelNameRouter({AGENT_RUNS_CHANNEL: RunWorkerConsumer.as_asgi()}),
    }
)
