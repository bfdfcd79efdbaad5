"""``bench.conveyor_app`` with OpenTelemetry tracing on (``-A bench.traced_app``): the SDK's
tracer provider with a batch processor and an exporter that drops the spans, so a drain
measures the cost of making spans, not of shipping them."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench.conveyor_app import app, noop, noop_result
from conveyor.integrations.otel import OpenTelemetryMiddleware


class DropSpans(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(DropSpans()))
app.add_middleware(OpenTelemetryMiddleware(tracer_provider=provider))

__all__ = ["app", "noop", "noop_result"]
