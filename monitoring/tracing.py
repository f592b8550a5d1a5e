"""One OpenTelemetry trace per agent run (docs/operations.md "What to watch" → Traces).

The run is the root span (`invoke_agent <agent>`); each tool call (`execute_tool <tool>`) and each
model round (`chat <model>`) is its child. A `send` that carried a W3C `traceparent` makes the run's
root span a child of the caller's span, so the run shows up inside the caller's trace. A run parked
on an approval ends its span there; the leg that resumes it (on any worker, later) starts a span
whose parent is the first leg's root span (`AgentRun.trace_context`), so one trace holds the run.

On when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set: spans go out
by OTLP over HTTP/protobuf from a batch processor (a background thread, never the event loop).
Otherwise nothing is set up: every helper here returns a shared do-nothing handle after one
attribute check, so a run pays a few function calls, no span objects and no ids (measured in the
operations doc). OTEL_SDK_DISABLED=true turns it off even with an endpoint. The exporter reads the
other OTEL_EXPORTER_OTLP_* variables (headers, timeout) itself; OTEL_TRACES_SAMPLER picks the sampler
(the default follows the caller's sampled flag, and samples every run that has no caller).

No span per WebSocket frame: the socket's hot path is measured by the Prometheus families instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACER_NAME = "chatcore.agents"
DEFAULT_SERVICE_NAME = "chatcore"
# Error text put on a span: enough to read what failed, not a tool's whole output.
MAX_ERROR_CHARS = 300
_PROPAGATOR = TraceContextTextMapPropagator()


class _State:
    provider: Any = None  # the SDK's TracerProvider while tracing is on
    tracer: Tracer | None = None
    env_read = False


def _tracer() -> Tracer | None:
    """The tracer, or None when tracing is off. The environment is read on the first run, in the
    process that runs it (after any fork of the server's workers)."""
    if not _State.env_read:
        configure_from_env()
    return _State.tracer


def enabled() -> bool:
    return _tracer() is not None


def configure_from_env() -> bool:
    """Turn OTLP export on if the environment asks for it; True when it did."""
    _State.env_read = True
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    # Imported only when tracing is on: the SDK and the exporter's protobuf stack cost start-up
    # time and memory that a deployment without a collector should not pay.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # (see above)
    from opentelemetry.sdk.resources import Resource  # (see above)
    from opentelemetry.sdk.trace import TracerProvider  # (see above)
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # (see above)

    service = os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use_provider(provider)
    # Also the process's global provider, so any instrumentation an operator adds joins these traces.
    trace.set_tracer_provider(provider)
    return True


def use_provider(provider: Any) -> Any:
    """Trace with `provider` (an SDK TracerProvider; None turns tracing off); returns the previous
    one. Tests pass a provider with an in-memory exporter."""
    previous = _State.provider
    _State.provider = provider
    _State.tracer = provider.get_tracer(TRACER_NAME) if provider is not None else None
    _State.env_read = True
    return previous


def parent_context(traceparent: str) -> Context | None:
    """The remote span a W3C `traceparent` names, as a context to start a child in; None when it
    is empty or not a valid traceparent."""
    if not traceparent:
        return None
    context = _PROPAGATOR.extract({"traceparent": traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def traceparent_of(span: Span) -> str:
    """`span`'s context as a W3C traceparent (version 00)."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


class RunTrace:
    """A run's root span, as the runtime uses it."""

    def __init__(self, span: Span | None, store: bool) -> None:
        self.span = span
        self._store = store
        self.outcome_set = False

    def to_store(self) -> tuple[str, str] | None:
        """(trace id, the root span's traceparent) to keep on the run: on its first traced leg only,
        so that every later leg continues the same trace."""
        if self.span is None or not self._store or not self.span.get_span_context().is_valid:
            return None
        return f"{self.span.get_span_context().trace_id:032x}", traceparent_of(self.span)

    def set(self, key: str, value: Any) -> None:
        if self.span is not None and value is not None:
            self.span.set_attribute(key, value)

    def outcome(self, outcome: str, error_code: str = "") -> None:
        """How this leg ended: completed, failed, cancelled, waiting_approval or ended_elsewhere."""
        self.outcome_set = True
        if self.span is None:
            return
        self.span.set_attribute("agent.run.outcome", outcome)
        if error_code:
            self.span.set_attribute("error.type", error_code)
            self.span.set_status(Status(StatusCode.ERROR, error_code))


NO_RUN = RunTrace(None, False)


@contextmanager
def run_span(
    *, run_id: str, agent: str, conversation_id: str, traceparent: str = "", resumed: bool = False, continues: str = ""
) -> Iterator[RunTrace]:
    """The root span of one leg of a run, current for the caller's task while it runs.

    `continues`: the first leg's root span (a traceparent), for a leg resumed after an approval;
    otherwise `traceparent`, the caller's span from `send`, is the parent (none: a new trace)."""
    tracer = _tracer()
    if tracer is None:
        yield NO_RUN
        return
    parent = parent_context(continues) or parent_context(traceparent)
    span = tracer.start_span(
        f"invoke_agent {agent}",
        context=parent,
        kind=SpanKind.INTERNAL,
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent,
            "gen_ai.conversation.id": conversation_id,
            "agent.run.id": run_id,
            "agent.run.resumed": resumed,
        },
    )
    handle = RunTrace(span, store=not continues)
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield handle
    except BaseException as exc:
        if not handle.outcome_set:  # a crash the runtime did not turn into an outcome
            handle.outcome("error", type(exc).__name__)
        raise
    finally:
        span.end()


class StepSpan:
    """A tool call's or a model round's span: what it returned."""

    def __init__(self, span: Span | None) -> None:
        self.span = span

    def tool_outcome(self, ok: bool, result: Any) -> None:
        if self.span is None:
            return
        self.span.set_attribute("agent.tool.ok", ok)
        if not ok:
            error = result.get("error") if isinstance(result, dict) else result
            self.span.set_status(Status(StatusCode.ERROR, str(error)[:MAX_ERROR_CHARS]))

    def round_end(self, *, finish_reason: str | None, usage: tuple[int, int] | None = None) -> None:
        """The round's end: why the model stopped, and its (input, output) tokens when it said."""
        if self.span is None:
            return
        if finish_reason:
            self.span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
        if usage is not None:
            self.span.set_attribute("gen_ai.usage.input_tokens", usage[0])
            self.span.set_attribute("gen_ai.usage.output_tokens", usage[1])


NO_STEP = StepSpan(None)


@contextmanager
def tool_span(tool: str, call_id: str) -> Iterator[StepSpan]:
    """A tool call, child of the current run span (current itself while the tool runs)."""
    tracer = _tracer()
    if tracer is None:
        yield NO_STEP
        return
    attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool, "gen_ai.tool.call.id": call_id}
    with tracer.start_as_current_span(f"execute_tool {tool}", attributes=attributes) as span:
        yield StepSpan(span)


@contextmanager
def llm_round(provider: str, model: str, round_no: int, server: str = "") -> Iterator[StepSpan]:
    """One model round, child of the current run span. Never made current: a backend is an async
    generator, and a context set inside one would leak into its caller at each yield. A generator
    closed or cancelled mid-round is not an error of the model's."""
    tracer = _tracer()
    if tracer is None:
        yield NO_STEP
        return
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "agent.llm.round": round_no,
    }
    if server:
        attributes["server.address"] = server
    span = tracer.start_span(f"chat {model}", attributes=attributes)
    try:
        yield StepSpan(span)
    except (GeneratorExit, asyncio.CancelledError):
        raise
    except Exception as exc:
        span.set_attribute("error.type", str(getattr(exc, "code", None) or type(exc).__name__))
        span.set_status(Status(StatusCode.ERROR, str(exc)[:MAX_ERROR_CHARS]))
        raise
    finally:
        span.end()
