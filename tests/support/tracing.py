"""Fixtures for tests that read the spans of agent runs (monitoring/tracing.py).

tests/conftest.py registers this module as a plugin, so a test asks for `spans` (tracing on, into
memory) or `tracing_off` by name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from monitoring import tracing


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test, into memory (synchronously: a span is there once it ended)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(previous)
    provider.shutdown()


@pytest.fixture
def tracing_off() -> Iterator[None]:
    previous = tracing.use_provider(None)
    yield
    tracing.use_provider(previous)
