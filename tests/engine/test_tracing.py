"""OpenTelemetry spans (the `otel` extra) recorded by the SDK's in-memory exporter: a web request,
the job it enqueued and each attempt share one trace on both backends; without the extra nothing
is traced and jobs run as before."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ledgerflow import Snooze, current_job, tracing
from ledgerflow.engine.jobs import JobSpec
from tests.api.conftest import serve_app
from tests.conftest import ROOT, wait_until

__all__ = ["serve_app"]


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """ledgerflow's spans go to an in-memory exporter for this test (the global provider is untouched)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.set_tracer_provider(provider)
    yield memory
    tracing.set_tracer_provider(None)
    provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


def current_span_id() -> str:
    return format(trace.get_current_span().get_span_context().span_id, "016x")


def test_a_web_request_and_the_job_it_enqueued_share_one_trace(serve_app, exporter):
    service = serve_app()
    service.app.task(name="traced.sync")(current_span_id)
    caller = tracing._tracer().start_span("client: book the receipt")  # the caller's own span
    headers: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(headers, trace.set_span_in_context(caller))
    created = service.post("/api/jobs", json={"task": "traced.sync"}, headers=headers)
    caller.end()
    assert created.status_code == 201, created.text
    job = created.json()
    trace_id = format(caller.get_span_context().trace_id, "032x")
    assert job["trace_context"]["traceparent"].split("-")[1] == trace_id

    service.app.run_worker(concurrency=1, burst=True)
    spans = exporter.get_finished_spans()
    (server,) = by_name(spans, "POST /api/jobs")
    (enqueue,) = by_name(spans, "ledgerflow.enqueue traced.sync")
    (run,) = by_name(spans, "ledgerflow.run traced.sync")
    assert {s.context.trace_id for s in (server, enqueue, run)} == {caller.get_span_context().trace_id}
    assert server.kind == SpanKind.SERVER and server.parent.span_id == caller.get_span_context().span_id
    assert server.attributes["http.response.status_code"] == 201
    assert enqueue.kind == SpanKind.PRODUCER and enqueue.parent.span_id == server.context.span_id
    assert enqueue.attributes["messaging.message.id"] == str(job["id"])
    assert run.kind == SpanKind.CONSUMER and run.parent.span_id == enqueue.context.span_id
    assert run.attributes["ledgerflow.outcome"] == "completed" and run.attributes["ledgerflow.attempt"] == 1
    result = service.app.store.get(job["id"]).result
    assert result == format(run.context.span_id, "016x"), "inside the task the attempt's span is current"


def test_each_attempt_is_a_span_of_the_enqueuing_trace_and_failures_are_errors(make_app, exporter):
    app = make_app()

    @app.task(name="traced.flaky", retry_backoff=[0.0], max_attempts=2)
    async def flaky() -> str:
        job = current_job()
        if job.attempt == 1:
            raise RuntimeError("the bank API timed out")
        return current_span_id()

    with tracing._tracer().start_as_current_span("nightly script") as script:
        job = flaky.enqueue()
    app.run_worker(concurrency=1, burst=True)
    assert app.store.get(job.id).state == "completed"
    spans = exporter.get_finished_spans()
    (enqueue,) = by_name(spans, "ledgerflow.enqueue traced.flaky")
    first, second = sorted(by_name(spans, "ledgerflow.run"), key=lambda s: s.attributes["ledgerflow.attempt"])
    assert enqueue.parent.span_id == script.get_span_context().span_id
    for attempt in (first, second):
        assert attempt.context.trace_id == script.get_span_context().trace_id
        assert attempt.parent.span_id == enqueue.context.span_id
    assert first.status.status_code == StatusCode.ERROR
    assert "RuntimeError: the bank API timed out" in first.status.description
    assert first.events[0].name == "exception"
    assert first.attributes["ledgerflow.outcome"] == "failed"
    assert second.status.status_code != StatusCode.ERROR
    assert app.store.get(job.id).result == format(second.context.span_id, "016x"), "async tasks too"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_snoozed_attempt_is_a_span_without_an_error_or_exception(make_app, exporter, kind):
    """A snooze is the task asking to run later, not a failure: its span records no exception."""
    app = make_app()

    def body() -> str:
        if current_job().attempt == 1:
            raise Snooze(0.0)
        return "done"

    if kind == "sync":
        task = app.task(name="traced.later")(body)
    else:

        async def later() -> str:
            return body()

        task = app.task(name="traced.later")(later)
    job = task.enqueue()
    app.run_worker(concurrency=1, burst=True)
    assert app.store.get(job.id).state == "completed"
    runs = by_name(exporter.get_finished_spans(), "ledgerflow.run")
    snoozed, done = sorted(runs, key=lambda s: s.attributes["ledgerflow.attempt"])
    assert snoozed.attributes["ledgerflow.outcome"] == "snoozed"
    assert snoozed.status.status_code != StatusCode.ERROR
    assert [e.name for e in snoozed.events] == []
    assert done.attributes["ledgerflow.outcome"] == "completed"


def test_a_batch_enqueued_in_one_span_carries_its_context(make_app, exporter):
    app = make_app()
    task = app.task(name="traced.batch")(current_span_id)
    with tracing._tracer().start_as_current_span("import statement"):
        ids = app.enqueue_many([task.prepare() for _ in range(3)])
    (batch,) = by_name(exporter.get_finished_spans(), "ledgerflow.enqueue traced.batch")
    assert batch.attributes["messaging.batch.message_count"] == 3
    contexts = {tuple(app.store.get(i).trace_context["traceparent"].split("-")[1:3]) for i in ids}
    assert contexts == {(f"{batch.context.trace_id:032x}", f"{batch.context.span_id:016x}")}


def test_spans_a_task_opens_in_its_child_process_join_the_attempts_trace(
    make_app, exporter, workers, tmp_path
):
    """A real worker process runs an `isolation="process"` task: the spans the child opens are
    children of the attempt's span, in the trace of the script that enqueued the job, and the
    child's progress reports reach the database through the worker."""
    app = make_app()
    spans_file = tmp_path / "spans.jsonl"
    with tracing._tracer().start_as_current_span("nightly script") as script:
        job = app.enqueue(JobSpec("traced.isolated", kwargs={"pages": 3}))
    worker = workers(app="tests.apps.traced:app", env={"TRACED_SPANS": str(spans_file)})
    wait_until(lambda: app.store.get(job.id).state == "completed", 120, message="job completed")
    worker.stop()
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    (run,) = [s for s in spans if s["name"] == "ledgerflow.run traced.isolated"]
    pages = sorted((s for s in spans if s["name"].startswith("read page")), key=lambda s: s["name"])
    trace_id = f"{script.get_span_context().trace_id:032x}"
    (enqueue,) = by_name(exporter.get_finished_spans(), "ledgerflow.enqueue traced.isolated")
    assert run["trace_id"] == trace_id and run["parent_id"] == f"{enqueue.context.span_id:016x}"
    assert run["pid"] == worker.pid and run["attributes"]["ledgerflow.outcome"] == "completed"
    assert [s["name"] for s in pages] == ["read page 1", "read page 2", "read page 3"]
    for page in pages:
        assert page["trace_id"] == trace_id, "the child's span left the attempt's trace"
        assert page["parent_id"] == run["span_id"], "the child's span is not a child of the attempt"
        assert page["pid"] != worker.pid, "the span was not opened in the child process"
    assert app.store.get(job.id).result == run["span_id"], "in the child the attempt's span is current"
    final = app.store.executions(job.id)[-1]["execution_metadata"]
    assert final["progress"] == 100 and final["message"] == "page 3 of 3"


def test_without_a_configured_sdk_no_context_is_stored(make_app):
    app = make_app()
    job = app.enqueue(JobSpec("anything"))
    assert job.trace_context is None and app.store.get(job.id).trace_context is None


def test_without_a_configured_sdk_an_attempt_carries_its_enqueuers_context(make_app):
    """No span is recorded, but what the task enqueues joins the trace that enqueued it (the
    no-op tracer's span was the enqueuer's own)."""
    app = make_app()
    task = app.task(name="carrier")(lambda: tracing.carrier())
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracing.attached({"traceparent": incoming}):
        traced = task.enqueue()
    untraced = task.enqueue()
    app.run_worker(concurrency=1, burst=True)
    assert app.store.get(traced.id).result == {"traceparent": incoming}
    assert app.store.get(untraced.id).result is None


SCRIPT = """
import json, sys
sys.modules["opentelemetry"] = None  # the extra is not installed
from ledgerflow import App, tracing
app = App(database_url=sys.argv[1], log_level="ERROR")
task = app.task(name="untraced")(lambda: "ran")
job = task.enqueue()
ids = app.enqueue_many([task.prepare(), task.prepare()])
app.run_worker(concurrency=1, burst=True)
jobs = [app.store.get(i) for i in [job.id, *ids]]
print(json.dumps({"enabled": tracing.enabled(), "jobs": [[j.state, j.trace_context] for j in jobs]}))
"""


def test_without_the_extra_nothing_is_traced_and_jobs_run(db_url):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, db_url], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report == {"enabled": False, "jobs": [["completed", None]] * 3}


def test_a_traced_bulk_past_the_drivers_parameter_limit_stores_every_job_with_its_context(make_app, exporter):
    """The bulk insert's trace context is written by id: 70,000 ids are more parameters than
    psycopg sends in one statement (65,535; the bulk failed as a retryable "unavailable")."""
    app = make_app()
    ids = app.enqueue_many([JobSpec(task="plain")] * 70_000)
    (span,) = by_name(exporter.get_finished_spans(), "ledgerflow.enqueue plain")
    assert len(set(ids)) == 70_000
    for job_id in (ids[0], ids[32_766], ids[65_535], ids[-1]):
        context = app.get_job(job_id).trace_context
        assert context is not None and format(span.context.span_id, "016x") in context["traceparent"]
