"""Agent backends, chosen by settings.AGENT_BACKEND."""

from __future__ import annotations

from django.conf import settings

from agents.backends.base import Backend


def get_backend() -> Backend:
    # Each backend is imported only when chosen: the offline default must not need the HTTP
    # client stack, and the OpenAI-compatible one must not load the offline agent's rules.
    if settings.AGENT_BACKEND == "openai":
        from agents.backends.openai import OpenAIBackend  # (see above)

        return OpenAIBackend.from_settings()
    if settings.AGENT_BACKEND == "offline":
        from agents.backends.offline import OfflineBackend  # (see above)

        return OfflineBackend()
    raise ValueError(f"unknown AGENT_BACKEND {settings.AGENT_BACKEND!r} (use 'offline' or 'openai')")
