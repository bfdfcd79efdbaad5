"""OpenTelemetry: request -> delay() -> worker run forms one trace (send span, process span,
the task's own spans), with the messaging attributes; failures marked on the process span."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conveyor import Conveyor, Task
from conveyor.integrations.otel import OpenTelemetryMiddleware
from conveyor.testing import TestWorker, make_test_app


@pytest.fixture
def traced() -> Iterator[tuple[Conveyor, InMemorySpanExporter, TracerProvider]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = make_test_app("traced", middleware=[OpenTelemetryMiddleware(tracer_provider=provider)])
    yield app, exporter, provider
    app.close()
    provider.shutdown()


def run(app: Conveyor) -> None:
    worker = TestWorker(app, queues=["default", "mail"])
    try:
        worker.run_until_idle(propagate=False)
    finally:
        worker.stop(timeout=10)


def named(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name == name]
    return span


def test_request_delay_and_worker_run_form_one_trace(
    traced: tuple[Conveyor, InMemorySpanExporter, TracerProvider],
) -> None:
    app, exporter, provider = traced
    tracer = provider.get_tracer("tests")

    @app.task(name="t.send_mail")
    def send_mail(to: str) -> str:
        with tracer.start_as_current_span("smtp"):
            return to

    with tracer.start_as_current_span("GET /signup") as request:
        result = send_mail.apply_async(("ann@example.com",), queue="mail")
    run(app)
    assert result.get(timeout=5) == "ann@example.com"
    spans = exporter.get_finished_spans()
    send, process, smtp = (
        named(spans, "send mail"),
        named(spans, "process mail"),
        named(spans, "smtp"),
    )
    trace_id = request.get_span_context().trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}  # one trace
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert smtp.parent is not None and smtp.parent.span_id == process.context.span_id
    assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert send.attributes is not None and process.attributes is not None
    assert dict(send.attributes) == {
        "messaging.system": "conveyor",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "mail",
        "messaging.message.id": result.id,
        "messaging.message.conversation_id": result.id,
        "conveyor.task.name": "t.send_mail",
    }
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.message.id"] == result.id
    assert process.attributes["conveyor.task.state"] == "SUCCESS"
    assert process.attributes["conveyor.delivery_count"] == 1
    assert process.status.status_code is StatusCode.UNSET


def test_failure_and_retry_spans(
    traced: tuple[Conveyor, InMemorySpanExporter, TracerProvider],
) -> None:
    app, exporter, _ = traced

    @app.task(name="t.boom", bind=True, max_retries=1)
    def boom(self: Task[[], None]) -> None:
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        raise KeyError("gone")

    result = boom.delay()
    run(app)
    processes = [s for s in exporter.get_finished_spans() if s.name == "process default"]
    assert [s.attributes and s.attributes["conveyor.task.state"] for s in processes] == [
        "RETRY",
        "FAILURE",
    ]
    assert [s.attributes and s.attributes["conveyor.task.retries"] for s in processes] == [0, 1]
    failed = processes[-1]
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {
        processes[0].context.trace_id
    }  # the retry's send span and run belong to the first send's trace
    assert result.state == "FAILURE"


def test_monitoring_example_prints_one_trace_metrics_and_a_redacted_json_line() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, str(root / "examples" / "monitoring" / "observe.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert (
        "POST /checkout (INTERNAL)\n  send default (PRODUCER)\n    process default (CONSUMER)\n"
        "      smtp.send (INTERNAL)"
    ) in out
    assert 'conveyor_task_succeeded_total{hostname="example",name="shop.send_receipt"' in out
    record = json.loads(out.splitlines()[0])
    assert record["task_name"] == "shop.send_receipt" and "s3cret" not in out
