"""W3C trace context across a task: the caller's ``traceparent`` rides the task's options to
its worker, where the task runs as a child span of the caller's (when OpenTelemetry is there).

OpenTelemetry is optional on both sides (``opentelemetry-api``). On the caller, a submit with
no ``traceparent=`` takes the current span's, but only if the application imported
OpenTelemetry already: squall never imports it for an application that does not trace, and
costs it one dict lookup per submit. On the worker, the task runs under a span named
``squall.task <function>`` whose parent is the caller's span, so the spans the task makes join
the caller's trace; without OpenTelemetry installed there, the task's log lines still carry
the trace id (see :func:`log_context`).
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from typing import Any

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


def check(value: object) -> str:
    """``value`` if it is a valid W3C ``traceparent`` header value.

    Raises:
        TypeError: not a str.
        ValueError: not ``version-traceid-parentid-flags`` in lowercase hex, or an all-zero
            id, or version ``ff`` (invalid by the W3C spec).
    """
    if not isinstance(value, str):
        raise TypeError(f"traceparent must be a str, not {type(value).__name__}")
    match = _TRACEPARENT.fullmatch(value)
    if (
        match is None
        or value.startswith("ff")
        or set(match.group(1)) == {"0"}
        or set(match.group(2)) == {"0"}
    ):
        raise ValueError(
            f"{value!r:.80} is not a W3C traceparent (00-<32 hex trace id>-<16 hex span id>-"
            "<2 hex flags>)"
        )
    return value


def current() -> str | None:
    """The ``traceparent`` of the current OpenTelemetry span, if the application imported
    OpenTelemetry and a valid span is current; else None."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def trace_id(traceparent: str) -> str:
    """The trace id part of a ``traceparent``."""
    return traceparent[3:35]


@contextlib.contextmanager
def remote_span(traceparent: str, name: str) -> Iterator[Any]:
    """Run the block as the child span ``squall.task <name>`` of the caller's span, when
    OpenTelemetry is installed here; else just run it."""
    try:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        yield None
        return
    parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    tracer = trace.get_tracer("squall")
    token = context.attach(parent)
    try:
        with tracer.start_as_current_span(
            f"squall.task {name}", kind=trace.SpanKind.CONSUMER
        ) as span:
            yield span
    finally:
        context.detach(token)


def log_context() -> dict[str, Any]:
    """The task a worker's greenlet is running, for its log lines: ``task_id`` and, when
    the caller sent one, ``trace_id`` (set by the worker on the greenlet; see
    ``runner/executor.py``)."""
    import gevent

    current = gevent.getcurrent()
    task = getattr(current, "squall_task_id", None)
    if task is None:
        return {}
    fields = {"task_id": f"{task:016x}"}
    trace = getattr(current, "squall_trace_id", None)
    if trace:
        fields["trace_id"] = trace
    return fields
