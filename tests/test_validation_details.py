"""Validation details name the field the client must fix, on REST, SSE and the WebSocket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError, model_validator
from quart.typing import TestClientProtocol
from websockets.asyncio.client import connect

from msev15 import create_app
from msev15.web import schemas
from msev15.web.errors import FieldError, validation_details
from msev15.web.schemas import ChatRequest
from tests.conftest import make_settings
from tests.servers import serve_on_loopback


@pytest.mark.parametrize("path", ["/api/v1/chat", "/api/v1/chat/stream"])
@pytest.mark.parametrize("body", [{"session_id": "s1"}, {"session_id": "s1", "message": None}])
async def test_a_chat_without_message_or_approvals_names_message(
    client: TestClientProtocol, path: str, body: dict[str, object]
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == 400
    error = (await response.get_json())["error"]
    assert error["type"] == "validation_error"
    assert error["details"] == [{"field": "message", "message": "Field required unless approvals are given"}]


async def test_field_errors_keep_naming_their_own_fields(client: TestClientProtocol) -> None:
    response = await client.post("/api/v1/chat", json={"session_id": "s1", "approvals": []})
    details = (await response.get_json())["error"]["details"]
    assert [d["field"] for d in details] == ["approvals"]
    response = await client.post("/api/v1/chat", json={"session_id": "bad id!", "message": "hi"})
    assert [d["field"] for d in (await response.get_json())["error"]["details"]] == ["session_id"]
    response = await client.post("/api/v1/chat", json=["not", "an", "object"])
    assert [d["field"] for d in (await response.get_json())["error"]["details"]] == ["body"]


async def test_a_websocket_chat_frame_without_message_names_message(tmp_path: Path) -> None:
    async with serve_on_loopback(create_app(make_settings(tmp_path))) as port:
        async with connect(f"ws://127.0.0.1:{port}/api/v1/chat/ws") as ws:
            await ws.send(json.dumps({"type": "chat", "session_id": "s1"}))
            frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
    assert frame["type"] == "error" and frame["code"] == "validation_error"
    assert [d["field"] for d in frame["details"]] == ["message"]


def test_every_model_validator_of_the_edge_names_a_field() -> None:
    """The edge's model-level validators raise FieldError, so no detail falls back to `body`."""
    with pytest.raises(ValidationError) as caught:
        ChatRequest.model_validate({"session_id": "s1"})
    assert validation_details(caught.value) == [
        {"field": "message", "message": "Field required unless approvals are given"}
    ]
    # A tripwire: a new model-level validator must raise FieldError too, and be tested here.
    with_validators = {
        name
        for name, model in vars(schemas).items()
        if isinstance(model, type)
        and issubclass(model, BaseModel)
        and model.__pydantic_decorators__.model_validators
    }
    assert with_validators == {"ChatRequest"}


def test_a_nested_field_error_names_the_whole_path() -> None:
    class Inner(BaseModel):
        a: int | None = None
        b: int | None = None

        @model_validator(mode="after")
        def _one_of(self) -> Inner:
            if self.a is None and self.b is None:
                raise FieldError("a", "give a or b")
            return self

    class Outer(BaseModel):
        items: list[Inner]

    with pytest.raises(ValidationError) as caught:
        Outer.model_validate({"items": [{"a": 1}, {}]})
    assert validation_details(caught.value) == [{"field": "items.1.a", "message": "give a or b"}]
