"""OpenTelemetry across processes: a send span in this process and the process span in a real
prefork worker's child belong to one trace, linked through the message's ``traceparent``.

The worker imports this module as its app; with ``$TRACE_SPANS_FILE`` set, its spans are
written there as one JSON object per line."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conveyor.integrations.otel import OpenTelemetryMiddleware
from tests.integration.test_worker_processes import (  # noqa: F401 - fixtures
    Harness,
    WorkerProcess,
    backend,
    harness_factory,
    redis_server,
    wait_for,
)
from tests.integration.workerapp import create_app

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
_spans_file = os.environ.get("TRACE_SPANS_FILE")
if _spans_file:  # in the worker: spans to a file, one JSON object per line

    def _one_line(span: ReadableSpan) -> str:
        return span.to_json(indent=None) + "\n"

    _out = open(_spans_file, "a", buffering=1)  # noqa: SIM115 - open for the process's life
    PROVIDER.add_span_processor(
        SimpleSpanProcessor(ConsoleSpanExporter(out=_out, formatter=_one_line))
    )
else:
    PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))

app = create_app()
app.add_middleware(OpenTelemetryMiddleware(tracer_provider=PROVIDER))


@pytest.fixture
def harness(harness_factory: Callable[..., Harness]) -> Harness:  # noqa: F811
    return harness_factory()


def test_send_in_this_process_and_run_in_a_worker_child_form_one_trace(harness: Harness) -> None:
    spans_file = harness.tmp_path / "spans.jsonl"
    env = {**harness.env, "TRACE_SPANS_FILE": str(spans_file)}
    worker = WorkerProcess(
        env,
        harness.tmp_path / "worker.log",
        ["-l", "info", "-c", "1", "-A", "tests.integration.test_tracing_processes:app"],
    )
    harness.workers.append(worker)
    client = create_app(harness.broker_url, **harness.settings)
    client.add_middleware(OpenTelemetryMiddleware(tracer_provider=PROVIDER))
    EXPORTER.clear()
    with PROVIDER.get_tracer("tests").start_as_current_span("request") as request:
        result = client.send_task("workerapp.add", (4, 5))
    try:
        assert result.get(timeout=30) == 9
    finally:
        client.close()
    [send] = [s for s in EXPORTER.get_finished_spans() if s.name == "send default"]

    def process_spans() -> list[dict[str, object]]:
        if not spans_file.exists():
            return []
        lines = spans_file.read_text().splitlines()
        return [s for s in map(json.loads, lines) if s["name"] == "process default"]

    wait_for(lambda: process_spans(), 10, f"the process span; log:\n{harness.output()}")
    [process] = process_spans()
    trace_id = f"0x{request.get_span_context().trace_id:032x}"
    assert send.context is not None and f"0x{send.context.trace_id:032x}" == trace_id
    assert process["context"]["trace_id"] == trace_id  # type: ignore[index]
    assert process["parent_id"] == f"0x{send.context.span_id:016x}"
    assert process["kind"] == "SpanKind.CONSUMER"
    assert process["attributes"]["messaging.message.id"] == result.id  # type: ignore[index]
