"""A test app whose processes export their spans (`--app tests.apps.traced:app`).

Every process that imports it — the worker and each `isolation="process"` child — sets up the
OpenTelemetry SDK with an in-memory exporter and appends what it exports to the JSON Lines
file named by `TRACED_SPANS`, so a test can read the spans of every process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ledgerflow import App, current_job


class FileExporter(InMemorySpanExporter):
    """The SDK's in-memory exporter, that also appends each span to a shared file."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(os.environ["TRACED_SPANS"], "a") as out:
            for s in spans:
                row = {
                    "name": s.name,
                    "pid": os.getpid(),
                    "trace_id": format(s.context.trace_id, "032x"),
                    "span_id": format(s.context.span_id, "016x"),
                    "parent_id": format(s.parent.span_id, "016x") if s.parent else None,
                    "attributes": dict(s.attributes or {}),
                }
                out.write(json.dumps(row) + "\n")
        return super().export(spans)


if os.environ.get("TRACED_SPANS"):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)

app = App()


@app.task(name="traced.isolated", isolation="process", timeout=60)
def isolated(pages: int) -> str:
    """Opens a span per page in the child process and reports progress."""
    job = current_job()
    assert job is not None
    tracer = trace.get_tracer("tests.traced")
    for page in range(1, pages + 1):
        with tracer.start_as_current_span(f"read page {page}"):
            job.progress(100 * page // pages, f"page {page} of {pages}")
    return format(trace.get_current_span().get_span_context().span_id, "016x")
