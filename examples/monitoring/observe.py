"""Metrics, a trace and JSON logs for one request, in one process (no server needed).

    python examples/monitoring/observe.py

A "web request" sends a task; an in-process worker runs it. The script prints the
trace (request -> send -> process -> the task's own span), the Prometheus lines of the
worker's counters, and the task's JSON log line.
"""

from __future__ import annotations

import logging
import sys

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from conveyor import Conveyor
from conveyor.integrations.otel import OpenTelemetryMiddleware
from conveyor.metrics import MetricsMiddleware, TallyCollector
from conveyor.testing import TestWorker
from conveyor.utils.log import JsonFormatter, get_task_logger

spans = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(spans))
metrics = MetricsMiddleware()
app = Conveyor(
    "shop",
    broker="memory://",
    middleware=[metrics, OpenTelemetryMiddleware(tracer_provider=provider)],
    worker_log_tasks=False,
)
tracer = provider.get_tracer("shop")
logger = get_task_logger("shop.tasks")


@app.task(name="shop.send_receipt")
def send_receipt(order: int, smtp_url: str) -> str:
    with tracer.start_as_current_span("smtp.send"):
        logger.info("receipt for order %s via %s", order, smtp_url)
    return f"sent {order}"


def main() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    with tracer.start_as_current_span("POST /checkout"):
        send_receipt.delay(7, "smtp://shop:s3cret@mail.example.com")
    with TestWorker(app) as worker:
        worker.run_until_idle()

    print("\n# trace")
    finished = {span.context.span_id: span for span in spans.get_finished_spans()}

    def depth(span_id: int) -> int:
        parent = finished[span_id].parent
        return 0 if parent is None or parent.span_id not in finished else 1 + depth(parent.span_id)

    for span in sorted(finished.values(), key=lambda s: s.start_time or 0):
        print(f"{'  ' * depth(span.context.span_id)}{span.name} ({span.kind.name})")

    print("\n# metrics")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TallyCollector(metrics.tally, "example"))
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("conveyor_task_") and "_bucket" not in line:
            print(line)
    app.close()


if __name__ == "__main__":
    main()
