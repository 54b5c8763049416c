"""The OpenAPI document, completed with what quart-schema cannot infer: errors, SSE and auth."""

from __future__ import annotations

from typing import Any

from quart_schema import OpenAPIProvider

from msev15.web.schemas import ID_PATTERN, ErrorResponse

_ERRORS = {
    400: "Invalid input (validation_error)",
    401: "API keys are configured and the key is missing or wrong (unauthorized)",
    403: "The key's tenant differs from the tenant asked for (forbidden)",
    404: "Unknown session or route (not_found)",
    405: "Method not allowed for this path (method_not_allowed)",
    413: "Body over MAX_REQUEST_BYTES (payload_too_large)",
    429: "Rate limited; see Retry-After (rate_limited)",
    500: "Unexpected failure (internal_error)",
    503: "The model or a critical part is unavailable (unavailable)",
}
_IDENTIFIER_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": ID_PATTERN}
_REQUEST_ID = {
    "X-Request-ID": {"description": "The request id, echoed or generated", "schema": {"type": "string"}}
}
_SSE_EVENT = {
    "type": "object",
    "description": "One event; its JSON is the `data:` of one SSE message.",
    "required": ["type", "session_id", "tenant_id", "turn_id", "seq"],
    "properties": {
        "type": {"enum": ["token", "tool_call", "tool_result", "approval_required", "done", "error"]},
        "session_id": {"type": "string"},
        "tenant_id": {"type": "string"},
        "content": {"type": "string"},
        "id": {"type": "string"},
        "name": {"type": "string"},
        "arguments": {"type": "object"},
        "ok": {"type": "boolean"},
        "error": {"type": "string"},
        "summary": {"type": "string"},
        "message": {"type": "string"},
        "message_count": {"type": "integer"},
        "request_id": {"type": "string"},
        "code": {"type": "string"},
        "turn_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$"},
        "seq": {"type": "integer", "minimum": 1},
        "interrupted": {"type": "boolean"},
    },
}
# OpenAPI 3.2 describes an event stream item by item: each SSE message's `data` is one JSON event.
_SSE_MESSAGE = {
    "type": "object",
    "required": ["data", "id"],
    "properties": {
        "id": {"type": "string", "description": "The resume position, <turn_id>:<seq>"},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": _SSE_EVENT},
    },
}
_SSE_DESCRIPTION = (
    "A text/event-stream of events, each an `id: <turn_id>:<seq>` line and a `data: {json}` line: "
    "token, tool_call, tool_result, approval_required, then exactly one done or error."
)


_STREAMS = {("/api/v1/chat/stream", "post"), ("/api/v1/sessions/{session_id}/stream", "get")}


class ServiceOpenAPI(OpenAPIProvider):
    """Every /api/v1 operation documents the error shape and bearer auth; the stream is text/event-stream."""

    def schema(self) -> dict[str, Any]:
        spec = super().schema()
        components = spec.setdefault("components", {})
        components.setdefault("schemas", {})["ErrorResponse"] = ErrorResponse.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for path, operations in spec["paths"].items():
            for method, operation in operations.items():
                if "requestBody" in operation:  # every documented body is required (json_body)
                    operation["requestBody"]["required"] = True
                for parameter in operation.get("parameters", []):
                    if parameter.get("in") == "path" and parameter.get("name") == "session_id":
                        parameter["schema"] = dict(_IDENTIFIER_SCHEMA)
                responses = operation.setdefault("responses", {})
                for response in responses.values():
                    response.setdefault("headers", {}).update(_REQUEST_ID)
                codes = [405, 500]
                if path.startswith("/api/v1/"):
                    operation["security"] = [{"bearer": []}, {"apiKey": []}, {}]
                    codes += [400, 401, 403, 429]
                    if method in ("post", "put", "patch"):
                        codes += [413, 503]
                    if "{session_id}" in path:
                        codes.append(404)
                for code in codes:
                    responses.setdefault(
                        code, {"description": _ERRORS[code], "content": error_content, "headers": _REQUEST_ID}
                    )
                if (path, method) in _STREAMS:
                    responses[200] = {  # quart-schema keys responses by int
                        "description": _SSE_DESCRIPTION,
                        "content": {"text/event-stream": {"itemSchema": _SSE_MESSAGE}},
                        "headers": _REQUEST_ID,
                    }
        return spec
