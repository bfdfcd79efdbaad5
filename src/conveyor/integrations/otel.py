"""OpenTelemetry tracing (``pip install conveyor[otel]``): a send span around each publish and
a process span around each task run, in one trace through the ``traceparent`` header.

    from conveyor.integrations.otel import OpenTelemetryMiddleware
    app.add_middleware(OpenTelemetryMiddleware())

Spans follow the OpenTelemetry semantic conventions for messaging spans, **v1.27.0**:

* ``send {queue}`` (kind PRODUCER), started in ``before_publish`` - a child of whatever span
  is current where ``delay()`` is called (a web request) - and ended in ``after_publish``.
  Its context goes into the message's headers (``traceparent``, ``tracestate``) through the
  configured propagator (W3C Trace Context by default);
* ``process {queue}`` (kind CONSUMER), a child of the send span, current while the task runs
  (the task's own spans nest under it); status ERROR with the exception recorded when the
  task fails.

Attributes: ``messaging.system`` (``conveyor``), ``messaging.operation.type`` and
``messaging.operation.name`` (``send`` / ``process``), ``messaging.destination.name`` (the
queue), ``messaging.message.id`` (the task id), ``messaging.message.conversation_id`` (the
workflow's root id); outside the conventions: ``conveyor.task.name``, and on process spans
``conveyor.task.retries``, ``conveyor.task.state`` and ``conveyor.delivery_count``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextvars import Token
from typing import TYPE_CHECKING

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .. import __version__, states
from ..middleware import Middleware

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..message import Envelope
    from ..worker.job import Job, Outcome

#: The messaging semantic conventions these spans follow.
SEMCONV_VERSION = "1.27.0"
SYSTEM = "conveyor"
#: Send spans whose publish never completed (an error before ``after_publish``) are ended
#: once this many newer ones are open.
MAX_OPEN_SENDS = 10_000


class OpenTelemetryMiddleware(Middleware):
    """Send and process spans linked through the message headers (see the module doc).

    ``tracer_provider``: where spans go (default: the global one); ``propagator``: how the
    context travels in headers (default: the global one, W3C ``traceparent``)."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(
            "conveyor",
            __version__,
            tracer_provider=tracer_provider,
            schema_url=f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}",
        )
        self._propagator = propagator
        self._lock = threading.Lock()
        self._sends: OrderedDict[str, Span] = OrderedDict()
        self._runs: dict[int, tuple[Span, Token[Context]]] = {}

    # -- producing ------------------------------------------------------------------------
    def before_publish(self, app: Conveyor, envelope: Envelope) -> None:
        span = self._tracer.start_span(
            f"send {envelope.queue}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": envelope.queue,
                "messaging.message.id": envelope.id,
                "messaging.message.conversation_id": envelope.root_id or envelope.id,
                "conveyor.task.name": envelope.task,
            },
        )
        carrier: dict[str, str] = {}
        ctx = trace.set_span_in_context(span)
        if self._propagator is not None:
            self._propagator.inject(carrier, context=ctx)
        else:
            propagate.inject(carrier, context=ctx)
        envelope.headers.update(carrier)
        stale: list[Span] = []
        with self._lock:
            self._sends[envelope.id] = span
            while len(self._sends) > MAX_OPEN_SENDS:
                stale.append(self._sends.popitem(last=False)[1])
        for old in stale:
            old.end()

    def after_publish(self, app: Conveyor, envelope: Envelope) -> None:
        with self._lock:
            span = self._sends.pop(envelope.id, None)
        if span is not None:
            span.end()

    # -- running --------------------------------------------------------------------------
    def before_process(self, job: Job) -> None:
        envelope = job.envelope
        carrier = {k: v for k, v in envelope.headers.items() if isinstance(v, str)}
        if self._propagator is not None:
            parent = self._propagator.extract(carrier)
        else:
            parent = propagate.extract(carrier)
        delivery = job.delivery
        span = self._tracer.start_span(
            f"process {envelope.queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": envelope.queue,
                "messaging.message.id": envelope.id,
                "messaging.message.conversation_id": envelope.root_id or envelope.id,
                "conveyor.task.name": envelope.task,
                "conveyor.task.retries": envelope.retries,
                "conveyor.delivery_count": delivery.delivery_count if delivery else 1,
            },
        )
        token = context.attach(trace.set_span_in_context(span))
        with self._lock:
            self._runs[id(job)] = (span, token)

    def after_process(self, job: Job, outcome: Outcome) -> None:
        with self._lock:
            run = self._runs.pop(id(job), None)
        if run is None:
            return
        span, token = run
        span.set_attribute("conveyor.task.state", outcome.state)
        if outcome.state == states.FAILURE:
            if outcome.error is not None:
                span.record_exception(outcome.error)
            span.set_status(Status(StatusCode.ERROR, type(outcome.error).__name__))
        span.end()
        context.detach(token)
