"""OpenTelemetry traces: one trace per cancellation request, from the API request through
the workflow to each of its activities.

Off unless the standard OTEL_EXPORTER_OTLP_ENDPOINT is set; then spans leave over OTLP
(HTTP/protobuf; the exporter reads the other OTEL_EXPORTER_OTLP_* variables itself, and
OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name the process). Every client that
`bajas.temporal_client.connect` makes carries Temporal's TracingInterceptor, and so does
every worker built on such a client; the API's FastAPI app is instrumented by
`starter.api.app.create_app`.
"""

from __future__ import annotations

import os

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from temporalio.contrib.opentelemetry import TracingInterceptor

ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"

_provider: TracerProvider | None = None


def setup(process: str, exporter: SpanExporter | None = None) -> TracerProvider | None:
    """Turn tracing on for this process when OTEL_EXPORTER_OTLP_ENDPOINT is set, or when
    a test hands in its own exporter (spans then go to it at once)."""
    global _provider
    if exporter is None and not os.environ.get(ENDPOINT_VARIABLE):
        return None
    if _provider is not None:
        return _provider
    name = os.environ.get("OTEL_SERVICE_NAME") or process
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _provider = provider
    return provider


def provider() -> TracerProvider | None:
    """The process's tracer provider; None while tracing is off."""
    return _provider


def client_interceptors() -> list[TracingInterceptor]:
    """What every Temporal client gets (its workers inherit it)."""
    if _provider is None:
        return []
    return [TracingInterceptor(_provider.get_tracer("bajas"))]


def shutdown() -> None:
    """Send what is buffered and turn tracing off (the end of a process, or of a test)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None
