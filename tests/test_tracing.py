"""Traces: the real service and the bundled MCP server export over OTLP/HTTP to a receiver on loopback."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from msev15 import ROOT, create_app, tracing
from msev15.logs import JsonFormatter
from tests.conftest import make_settings
from tests.helpers import eventually_sync, free_port
from tests.mcp_fixtures import McpProcess, make_orders_db
from tests.otlp_receiver import ReceivedSpan, Receiver, running_receiver
from tests.servers import hypercorn_service

API_KEY = "trace-test-key-5f1c"
ALICE = "alice@example.com"
SERVER, CLIENT = 2, 3  # OTLP span kinds


@dataclass
class Traced:
    url: str
    receiver: Receiver


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    """The service under Hypercorn and the MCP server, both exporting to one receiver."""
    data = tmp_path_factory.mktemp("traced")
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: spans reach the receiver soon after they end
    }
    with running_receiver() as receiver:
        otel["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
        with pytest.MonkeyPatch.context() as patch:  # McpProcess passes on this process's environment
            for name, value in otel.items():
                patch.setenv(name, value)
            mcp = McpProcess(make_orders_db(data / "orders.db")).start()
        port = free_port()
        env = {
            **os.environ,
            **otel,
            "ORDER_DB_PATH": str(data / "orders.db"),
            "OUTBOX_DIR": str(data / "outbox"),
            "LOG_TO_FILE": "false",
            "LOG_LEVEL": "WARNING",
            "LLM_PROVIDER": "offline",
            "MCP_SERVER_URL": mcp.url,
            "MCP_AUTOSTART": "false",
            "API_KEYS": f"{API_KEY}:default",
            "ENABLE_RATE_LIMITING": "false",
        }
        url = f"http://127.0.0.1:{port}"
        try:
            with hypercorn_service(
                url,
                ["--bind", f"127.0.0.1:{port}"],
                env,
                ready=lambda r: bool(r.json()["checks"].get("mcp") == "ok"),
                path="/health/readiness",
            ):
                yield Traced(url, receiver)
        finally:
            mcp.stop()


def chat(traced: Traced, message: str, session_id: str) -> str:
    response = httpx.post(
        f"{traced.url}/api/v1/chat",
        json={"message": message, "session_id": session_id},
        headers={"X-API-Key": API_KEY},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["request_id"])


def trace_of(traced: Traced, request_id: str, *, expect: set[str]) -> list[ReceivedSpan]:
    """Every span of the request's trace, once the span names in `expect` have all arrived."""

    def arrived() -> list[ReceivedSpan]:
        turns = [s for s in traced.receiver.snapshot() if s.attributes.get("msev15.request_id") == request_id]
        assert len(turns) == 1, f"{len(turns)} turn spans for the request"
        spans = traced.receiver.trace(turns[0].trace_id)
        missing = expect - {s.name for s in spans}
        assert not missing, f"not yet: {sorted(missing)}"
        return spans

    return eventually_sync(arrived, within=10, interval=0.05, what=f"the trace of {request_id}")


def one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{len(found)} spans named {name!r}: {[s.name for s in spans]}"
    return found[0]


def test_an_mcp_tool_call_is_one_trace_down_to_the_mcp_server(traced: Traced) -> None:
    message = f"What is your returns policy? I'm {ALICE}"
    request_id = chat(traced, message, "trace-mcp")
    spans = trace_of(
        traced,
        request_id,
        expect={
            "POST /api/v1/chat",
            "invoke_agent msev15",
            "execute_tool get_policy",
            "tools/call get_policy",
        },
    )
    http = one(spans, "POST /api/v1/chat")
    assert http.kind == SERVER and http.parent_id == "" and http.service == "msev15"
    assert http.attributes["http.route"] == "/api/v1/chat"
    turn = one(spans, "invoke_agent msev15")
    assert turn.parent_id == http.span_id
    assert turn.attributes["msev15.turn.outcome"] == "ok"
    models = [s for s in spans if s.name == "chat offline"]
    assert len(models) == 2  # the round that calls the tool, the round that answers
    for model in models:
        assert model.parent_id == turn.span_id and model.kind == CLIENT
        assert model.attributes["gen_ai.request.model"] == "offline"
        assert model.attributes["gen_ai.operation.name"] == "chat"
        assert model.attributes["gen_ai.response.finish_reasons"]
    tool = one(spans, "execute_tool get_policy")
    assert tool.parent_id == turn.span_id
    assert (
        tool.attributes["gen_ai.tool.name"] == "get_policy" and tool.attributes["msev15.tool.result"] == "ok"
    )
    sent = one(spans, "MCP send tools/call get_policy")
    assert sent.parent_id == tool.span_id and sent.kind == CLIENT
    served = one(spans, "tools/call get_policy")
    assert served.service == "msev15-mcp" and served.kind == SERVER
    assert served.parent_id == sent.span_id  # the MCP server continued the caller's trace
    assert_nothing_private(spans, message)


def test_a_local_tool_with_its_sql_is_one_trace_per_request(traced: Traced) -> None:
    message = f"Where is my order ORD-1002? I'm {ALICE}"
    first = chat(traced, message, "trace-local")
    second = chat(traced, "thanks", "trace-local")
    spans = trace_of(traced, first, expect={"POST /api/v1/chat", "execute_tool get_order", "sqlite read"})
    tool = one(spans, "execute_tool get_order")
    reads = [s for s in spans if s.name == "sqlite read" and s.parent_id == tool.span_id]
    assert reads and reads[0].attributes["db.system.name"] == "sqlite"
    later = trace_of(traced, second, expect={"POST /api/v1/chat", "invoke_agent msev15"})
    assert later[0].trace_id != spans[0].trace_id  # each request its own trace
    roots = [s for s in spans if s.parent_id == ""]
    assert [r.name for r in roots] == ["POST /api/v1/chat"]  # everything of the request hangs under it
    assert_nothing_private(spans + later, message)


def test_a_key_in_the_query_string_never_reaches_a_span(traced: Traced) -> None:
    """The WebSocket takes `?api_key=`: the tracing middleware never sees a query string."""
    keyed = httpx.get(f"{traced.url}/api/v1/audit", params={"api_key": API_KEY, "limit": "1"}, timeout=10)
    assert keyed.status_code in (400, 401)  # a key in the query is the WebSocket's way only
    response = httpx.get(
        f"{traced.url}/api/v1/sessions",
        params={"tenant_id": "tenant-b"},
        headers={"X-API-Key": API_KEY},
        timeout=10,
    )
    assert response.status_code == 403  # below the middleware the app still reads its query

    def exported() -> list[ReceivedSpan]:
        names = {"GET /api/v1/audit", "GET /api/v1/sessions"}
        found = [s for s in traced.receiver.snapshot() if s.name in names]
        assert {s.name for s in found} == names
        return found

    for server in eventually_sync(exported, within=10, interval=0.05, what="the two requests' spans"):
        shown = orjson.dumps(server.attributes).decode()
        assert API_KEY not in shown and "tenant-b" not in shown and "?" not in shown, shown


def assert_nothing_private(spans: list[ReceivedSpan], message: str) -> None:
    """No email address, message text or key in any attribute (nor in a span's name)."""
    for span in spans:
        shown = orjson.dumps(span.attributes).decode() + span.name
        assert "@" not in shown, (span.name, span.attributes)
        assert API_KEY not in shown, span.name
        for word in ("policy?", "Where is my order", "thanks", message):
            assert word not in shown, (span.name, span.attributes)


# Off: nothing at all ------------------------------------------------------------------------------


def test_without_an_endpoint_there_is_no_provider_and_no_span(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    app = create_app(make_settings(tmp_path))
    assert not tracing.tracing_enabled()
    assert type(app.asgi_app).__name__ != "_HideQuery"  # no middleware in the way
    assert tracing.span("anything", {"a": 1}) is tracing.span("other")  # one shared no-op
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"  # none was installed
    assert tracing.current_ids() is None


def test_log_lines_carry_the_trace_and_span_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = TracerProvider()  # a local provider: the process-wide one stays unset
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    record = logging.LogRecord("msev15.test", logging.INFO, __file__, 1, "inside", None, None)
    with tracing.span("work") as current:
        line = orjson.loads(JsonFormatter().format(record))
    context = current.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    outside = orjson.loads(JsonFormatter().format(record))
    assert "trace_id" not in outside


def test_without_an_endpoint_the_sdk_is_never_loaded() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    code = (
        "import sys, tempfile, pathlib\n"
        "from msev15 import create_app\n"
        "from tests.conftest import make_settings\n"
        "create_app(make_settings(pathlib.Path(tempfile.mkdtemp())))\n"
        "print(' '.join(sys.modules))"
    )
    out = subprocess.run(  # noqa: S603 - a fixed program
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    loaded = set(out.stdout.split())
    assert not {m for m in loaded if m.startswith(("opentelemetry.sdk", "opentelemetry.instrumentation"))}


def test_background_work_starts_no_trace_of_its_own(traced: Traced) -> None:
    """The MCP client's connect, listings and probes, start-up SQL: traced only under a request."""
    chat(traced, "hello", "trace-roots")
    roots = [s for s in traced.receiver.snapshot() if s.parent_id == ""]
    assert roots
    for root in roots:
        assert root.kind == SERVER and root.service == "msev15", (root.service, root.name)


def test_probes_scrapes_and_static_files_are_not_traced(traced: Traced) -> None:
    for path in ("/health", "/health/liveness", "/health/readiness", "/metrics", "/static/app.js"):
        httpx.get(f"{traced.url}{path}", timeout=10)
    later = chat(traced, "hello again", "trace-probes")  # exported after the probes' spans would be
    trace_of(traced, later, expect={"POST /api/v1/chat"})
    names = {s.name for s in traced.receiver.snapshot()}
    assert not {n for n in names if n.startswith(("GET /health", "GET /metrics", "GET /static"))}, names


def test_the_protocol_comes_from_the_standard_variables_and_an_unknown_one_stops_the_start() -> None:
    assert tracing.otlp_protocol({}) == "http/protobuf"
    assert tracing.otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "grpc"
    both = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    assert tracing.otlp_protocol(both) == "http/protobuf"  # the signal's own variable wins
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL='http/json' is not supported"):
        tracing.otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_spans_go_over_grpc_when_the_protocol_says_so() -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc: a real gRPC OTLP receiver on loopback gets the spans."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[str] = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method's name
            for resource_spans in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    received.extend(f"{service['service.name']}:{s.name}" for s in scope.spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env |= {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        }
        code = (
            "from msev15 import tracing\n"
            "assert tracing.configure_tracing()\n"
            "with tracing.span('turn'):\n"
            "    pass\n"
            "tracing.shutdown_tracing()\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=ROOT, env=env)  # noqa: S603
        assert received == ["msev15:turn"]
    finally:
        server.stop(grace=None)
