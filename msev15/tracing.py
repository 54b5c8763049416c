"""OpenTelemetry traces: on when OTEL_EXPORTER_OTLP_ENDPOINT is set, absent otherwise.

Set, the process gets a tracer provider (service name `msev15` unless OTEL_SERVICE_NAME says
otherwise) that batches spans to the OTLP/HTTP exporter; every other `OTEL_*` variable
(headers, sampler, batch delays, resource attributes) works as OpenTelemetry documents it.
Unset, no provider is installed and `span()` hands back one shared do-nothing context manager:
no span objects, no context switches, no attributes built.

Like the metrics, the provider is process-wide by nature: it is the second deliberate
module-level singleton. Spans carry no email address, message text or key: callers pass ids,
names, counts and fixed words only.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind as SpanKind  # re-exported: callers name span kinds

log = logging.getLogger(__name__)

SERVICE_NAME = "msev15"
_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()
_tracer: trace.Tracer | None = None
_provider: Any = None


def tracing_endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """The OTLP endpoint tracing exports to, or None (tracing off)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    return env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None


def configure_tracing(service_name: str = SERVICE_NAME) -> bool:
    """Install the tracer provider once per process when an OTLP endpoint is set; True when tracing is on."""
    global _tracer, _provider
    if _tracer is not None:
        return True
    endpoint = tracing_endpoint()
    if endpoint is None:
        return False
    protocol = otlp_protocol()
    # Imported here: a process without tracing never loads the SDK (nor gRPC without grpc).
    exporter = importlib.import_module(_EXPORTERS[protocol]).OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes), sampler=_background_dropped())
    provider.add_span_processor(BatchSpanProcessor(exporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = trace.get_tracer("msev15")
    log.info("tracing: exporting spans over OTLP (%s) to %s", protocol, _mask(endpoint))
    return True


# OTEL_EXPORTER_OTLP_PROTOCOL's values with a Python exporter (the SDK has none for http/json).
_EXPORTERS = {
    "http/protobuf": "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "grpc": "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
}


def otlp_protocol(environ: Mapping[str, str] | None = None) -> str:
    """OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf; a value
    no exporter here speaks stops the start, naming the variable."""
    env = os.environ if environ is None else environ
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = env.get(name, "").strip()
        if value:
            if value not in _EXPORTERS:
                raise ValueError(
                    f"{name}={value!r} is not supported: use http/protobuf (the default) or grpc"
                )
            return value
    return "http/protobuf"


# Spans that would start a trace of their own outside any request: the MCP client's probes, listings
# in its background task, start-up migrations and purges. Under a request they are traced as usual.
_BACKGROUND_ROOTS = ("MCP send ", "sqlite ", "postgresql ")


def _background_dropped() -> Any:
    """OTEL_TRACES_SAMPLER's sampler (default: parent-based, always on), minus background chatter."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, _get_from_env_or_default

    inner = _get_from_env_or_default()

    class BackgroundDropped(Sampler):
        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: Any = None,
            attributes: Any = None,
            links: Any = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            if (
                name.startswith(_BACKGROUND_ROOTS)
                and not trace.get_current_span(parent_context).get_span_context().is_valid
            ):
                return SamplingResult(Decision.DROP)
            return inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"BackgroundDropped{{{inner.get_description()}}}"

    return BackgroundDropped()


def tracing_enabled() -> bool:
    return _tracer is not None


def span(
    name: str, attributes: Mapping[str, Any] | None = None, kind: SpanKind = SpanKind.INTERNAL
) -> contextlib.AbstractContextManager[Any]:
    """A span around a block, current inside it; the shared no-op when tracing is off.

    Attributes are ids, names, counts and fixed words: never an email, a message or a key.
    Exceptions that leave the block are recorded on the span and mark it as an error.
    """
    if _tracer is None:
        return _NO_SPAN
    return _tracer.start_as_current_span(name, kind=kind, attributes=attributes)


def mark_error(traced: Any, kind: str) -> None:
    """Mark a span failed with a short fixed word (`error.type`); no message, which could quote input."""
    from opentelemetry.trace import Status, StatusCode

    traced.set_attribute("error.type", kind)
    traced.set_status(Status(StatusCode.ERROR))


def current_span() -> Any:
    """The span the code runs under (to add attributes found on the way), or None when tracing is off."""
    if _tracer is None:
        return None
    found = trace.get_current_span()
    return found if found.is_recording() else None


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the span the code runs under, for log lines; None without one."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def shutdown_tracing() -> None:
    """Flush what is batched (at process exit: a last request's spans are not lost)."""
    if _provider is not None:
        with contextlib.suppress(Exception):
            _provider.force_flush(5_000)


def _mask(url: str) -> str:
    return url.split("@")[-1] if "@" in url else url
