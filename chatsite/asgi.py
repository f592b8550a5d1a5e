"""ASGI entry point: HTTP to Django, /ws/chat/ to the chat consumer, `agent-runs` to the run worker."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from django.conf import settings  # noqa: E402

from chatsite.security import HardenedStaticFilesHandler  # noqa: E402

if settings.SERVE_STATIC:
    # One-machine deployments (and `make run`) serve /static/ from the app itself, like runserver,
    # with the hardening headers the middleware cannot add there.
    django_asgi_app = HardenedStaticFilesHandler(django_asgi_app)

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
from typing import Any  # noqa: E402

from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from agents.worker import AGENT_RUNS_CHANNEL, RunWorkerConsumer  # noqa: E402
from chat.consumers import ChatConsumer  # noqa: E402
from chat.realtime.auth import ChatAuthMiddleware  # noqa: E402

# The extension that lets a WebSocket app answer the handshake with a plain HTTP response.
HTTP_RESPONSE_EXTENSION = "websocket.http.response"
# How long a refusal waits for the server to report the connection gone (see below).
REFUSAL_DRAIN_S = 1.0


async def refuse_unknown_path(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A handshake on a path no consumer serves is refused before it is accepted (docs/protocol.md §1):
    HTTP 404 where the server offers the `websocket.http.response` extension (uvicorn), else a close
    before accept, which the server answers 403 (daphne). Without this route channels' router raises,
    which the server logs at ERROR with a traceback and answers 500: anyone could fill the logs. The
    server's own handshake line is the only line left, and nothing is looked up for it (this route is
    in front of the authentication middleware)."""
    await receive()  # websocket.connect: the handshake has arrived
    if HTTP_RESPONSE_EXTENSION not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close"})
        return
    await send({"type": "websocket.http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "websocket.http.response.body", "body": b"Not Found"})
    # uvicorn's websockets-sansio protocol marks the handshake complete only once the connection is
    # lost, not when a refusal has been sent: an app that returns before that is logged at ERROR
    # ("ASGI callable returned without completing handshake"). It reports the refusal and then the
    # loss each as a websocket.disconnect, so wait for both, bounded (other servers send one).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(REFUSAL_DRAIN_S):
            for _ in range(2):
                await receive()


class _RefusalEchoAtDebug(logging.Filter):
    """Lines a server's libraries add for a refused handshake after the server's own line for it
    ('"WebSocket /ws/nope/" 404', 'WSREJECT /ws/nope/'): the same fact again. websockets (under
    uvicorn) logs "connection rejected (404 Not Found)"; autobahn (under daphne -v 2) logs "failing
    WebSocket opening handshake ('Access denied')" and "dropping connection to peer …: Access denied".
    They are kept at DEBUG, so a refused handshake costs one line, whoever sends it."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno in (logging.INFO, logging.WARNING) and self.pattern.search(record.getMessage()):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


logging.getLogger("uvicorn.error").addFilter(_RefusalEchoAtDebug(r"^connection rejected \("))
logging.getLogger("daphne.server").addFilter(
    _RefusalEchoAtDebug(r"^(failing WebSocket opening handshake|dropping connection to peer).*Access denied")
)

websocket_urlpatterns = [
    # Origin, then session cookie or Bearer token (chat/realtime/auth.py). A foreign origin is
    # closed with 4403 per docs/protocol.md §1, which a handshake rejection could not express.
    path("ws/chat/", ChatAuthMiddleware(ChatConsumer.as_asgi())),
    # Everything else; last. An ASGI app, which django-stubs' re_path (typed for views) does not know.
    re_path(r"", refuse_unknown_path),  # type: ignore[arg-type]
]

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(websocket_urlpatterns),
        "channel": ChannelNameRouter({AGENT_RUNS_CHANNEL: RunWorkerConsumer.as_asgi()}),
    }
)
