"""chatclient: a small Python client for the chat server's chat.v1 WebSocket protocol.

It needs only `websockets` (no Django, nothing from the server's code), so any Python program can
talk to a running server:

    from chatclient import ChatClient

    client = ChatClient("ws://127.0.0.1:8000/ws/chat/", token="<access token>")
    await client.start()
    await client.subscribe(conversation_id)
    await client.send(conversation_id, "what is 17 * 23?")
    ...
    await client.close()

See README.md for getting a token and for what happens on a reconnect.
"""

from chatclient.backoff import Backoff
from chatclient.client import (
    MAX_RETRY_WAIT_S,
    RETRYABLE,
    SUBPROTOCOL,
    ChatClient,
    ConnectionLost,
    EventCallback,
    Stream,
    TokenSource,
)

__version__ = "0.1.0"

__all__ = [
    "MAX_RETRY_WAIT_S",
    "RETRYABLE",
    "SUBPROTOCOL",
    "Backoff",
    "ChatClient",
    "ConnectionLost",
    "EventCallback",
    "Stream",
    "TokenSource",
    "__version__",
]
