"""Every chat.v1 command handler, by name: what the consumer dispatches on.

Importing the modules that declare handlers is what registers them (`@command` in
chat.realtime.registry), so this is the one place that names them all: a new module of commands is
added here, and HANDLERS is whole wherever it is imported from.
"""

from __future__ import annotations

from chat.realtime import commands, message_actions
from chat.realtime.registry import HANDLERS, Handler

# The modules above are imported for their registrations; naming them keeps that explicit.
DECLARING_MODULES = (commands, message_actions)

__all__ = ["DECLARING_MODULES", "HANDLERS", "Handler"]
