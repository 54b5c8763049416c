"""The bundled MCP server's own tools, through the SDK's client against the real subprocess."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from msev15 import ROOT
from msev15.mcp_server import catalog
from msev15.mcp_server import server as mcp_server
from tests.mcp_fixtures import McpProcess, make_orders_db, running_mcp

EXPECTED_TOOLS = {"search_products", "get_product", "get_policy", "search_faq"}


@pytest.fixture(scope="module")
def shop_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_orders_db(tmp_path_factory.mktemp("mcp") / "orders.db")


@pytest.fixture(scope="module")
def server(shop_db: Path) -> Iterator[McpProcess]:
    with running_mcp(shop_db) as running:
        yield running


async def call(server: McpProcess, name: str, arguments: dict[str, Any]) -> tuple[bool, str]:
    async with Client(server.url) as client:
        result = await client.call_tool(name, arguments)
    text = "".join(getattr(block, "text", "") for block in result.content)
    return result.is_error, text


async def test_lists_exactly_the_shop_tools_with_precise_schemas(server: McpProcess) -> None:
    async with Client(server.url) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(listed) == EXPECTED_TOOLS  # the test-only slow tool stays hidden
    for tool in listed.values():
        assert tool.description and len(tool.description) > 40
        assert tool.input_schema["type"] == "object"
    assert listed["search_products"].input_schema["required"] == ["query"]
    assert listed["get_product"].input_schema["required"] == ["sku"]
    topic = listed["get_policy"].input_schema["properties"]["topic"]
    assert topic["enum"] == ["returns", "shipping", "warranty", "privacy"]
    assert listed["search_faq"].input_schema["required"] == ["query"]


async def test_search_products_ranks_by_term_overlap(server: McpProcess) -> None:
    is_error, text = await call(
        server, "search_products", {"query": "Do you sell noise cancelling headphones?"}
    )
    assert not is_error
    body = json.loads(text)
    assert body["count"] >= 1
    first = body["products"][0]
    assert first["sku"] == "HDP-NC100"
    assert first["price"] == "199.99" and first["currency"] == "USD"
    assert isinstance(first["stock"], int) and first["in_stock"] is True
    assert text == json.dumps(body, ensure_ascii=False, separators=(",", ":"))  # compact JSON


@pytest.mark.parametrize(
    ("query", "arguments", "skus"),
    [
        # The question: one mouse, not earbuds, a controller, headphones and an SSD.
        ("Do you sell wireless mice? What's the cheapest one?", {}, ["MSE-WL500"]),
        ("cheapest wireless", {}, ["MSE-WL500", "CTL-GAME", "EAR-BT200", "HDP-NC100"]),
        ("headphones under $50", {}, ["HDP-KID20"]),
        ("headphones", {"max_price": 50}, ["HDP-KID20"]),
        ("most expensive headphones", {}, ["HDP-NC100", "HDP-KID20"]),
        ("headphones", {"sort": "price_low_to_high"}, ["HDP-KID20", "HDP-NC100"]),
        ("earphones", {}, ["EAR-BT200", "HDP-KID20", "HDP-NC100"]),
        ("laptop bag", {}, ["BAG-LT15"]),
        ("MSE-WL500", {}, ["MSE-WL500"]),
        ("a headset with noise canceling", {}, ["HDP-NC100"]),
    ],
)
async def test_search_products_ranks_by_relevance_and_honours_price_words(
    server: McpProcess, query: str, arguments: dict[str, Any], skus: list[str]
) -> None:
    is_error, text = await call(server, "search_products", {"query": query, **arguments})
    assert not is_error, text
    body = json.loads(text)
    assert [p["sku"] for p in body["products"]] == skus
    if "cheapest" in query:
        assert body["sorted_by"] == "price_low_to_high"
    if "$50" in query or "max_price" in arguments:
        assert body["max_price"] == "50.00"


async def test_search_products_falls_back_to_any_word_only_when_no_product_has_them_all(
    server: McpProcess,
) -> None:
    _, text = await call(server, "search_products", {"query": "wireless periscope"})
    body = json.loads(text)
    assert body["count"] >= 3 and all("wireless" in json.dumps(p).lower() for p in body["products"])
    _, text = await call(server, "search_products", {"query": 'speaker" OR NEAR(x'})  # no FTS syntax leaks
    assert json.loads(text)["products"][0]["sku"] == "SPK-PT300"


def test_read_query_parses_price_words_and_synonyms() -> None:
    wanted = catalog.read_query("Cheapest wireless mice under $49.50 please")
    assert wanted.groups == (("wireless",), ("mice", "mouse"))
    assert (wanted.max_price_cents, wanted.sort) == (4950, "price_low_to_high")
    assert catalog.read_query("what's the most expensive monitor").sort == "price_high_to_low"
    assert catalog.read_query("monitor", sort="price_low_to_high").sort == "price_low_to_high"


async def test_search_products_without_match_says_so(server: McpProcess) -> None:
    is_error, text = await call(server, "search_products", {"query": "submarine periscope"})
    assert not is_error
    body = json.loads(text)
    assert body["count"] == 0 and body["products"] == []
    assert "No products match" in body["message"]


async def test_get_product_by_sku_is_case_insensitive(server: McpProcess) -> None:
    is_error, text = await call(server, "get_product", {"sku": "hdp-nc100"})
    assert not is_error
    product = json.loads(text)
    assert product["sku"] == "HDP-NC100"
    assert product["name"] == "Noise Cancelling Headphones"


async def test_get_product_not_found_is_a_clear_error(server: McpProcess) -> None:
    is_error, text = await call(server, "get_product", {"sku": "NOPE-123"})
    assert is_error
    assert "Not found" in text and "NOPE-123" in text


@pytest.mark.parametrize("topic", ["returns", "shipping", "warranty", "privacy"])
async def test_every_policy_topic(server: McpProcess, topic: str) -> None:
    is_error, text = await call(server, "get_policy", {"topic": topic})
    assert not is_error
    policy = json.loads(text)
    assert policy["topic"] == topic
    assert policy["title"] and policy["summary"] and len(policy["details"]) >= 3


async def test_policy_terms_are_the_documented_ones(server: McpProcess) -> None:
    _, returns = await call(server, "get_policy", {"topic": "returns"})
    _, warranty = await call(server, "get_policy", {"topic": "warranty"})
    assert "30 days" in returns
    assert "2 years" in warranty or "2-year" in warranty


async def test_bad_policy_topic_names_the_valid_ones(server: McpProcess) -> None:
    is_error, text = await call(server, "get_policy", {"topic": "discounts"})
    assert is_error
    assert "discounts" in text
    for topic in ("returns", "shipping", "warranty", "privacy"):
        assert topic in text


async def test_search_faq_finds_the_right_entry(server: McpProcess) -> None:
    is_error, text = await call(server, "search_faq", {"query": "how long does delivery take"})
    assert not is_error
    body = json.loads(text)
    assert body["results"][0]["id"] == "delivery-time"
    assert "business days" in body["results"][0]["answer"]


async def test_search_faq_without_match_says_so(server: McpProcess) -> None:
    _, text = await call(server, "search_faq", {"query": "zebra xylophone"})
    assert json.loads(text)["count"] == 0


async def test_empty_query_is_rejected(server: McpProcess) -> None:
    is_error, _ = await call(server, "search_products", {"query": ""})
    assert is_error


async def test_missing_database_answers_not_available(tmp_path: Path) -> None:
    server = mcp_server.build_server(tmp_path / "absent.db")
    async with Client(server) as client:  # in-process: the same tools without a subprocess
        result = await client.call_tool("get_product", {"sku": "HDP-NC100"})
        policy = await client.call_tool("get_policy", {"topic": "returns"})
    assert result.is_error
    assert "not available" in "".join(getattr(b, "text", "") for b in result.content)
    assert not policy.is_error
    assert not (tmp_path / "absent.db").exists()  # read-only: never created


def test_catalog_never_writes(shop_db: Path) -> None:
    import sqlite3

    catalog = mcp_server.Catalog(shop_db)
    with pytest.raises(sqlite3.OperationalError):
        conn = sqlite3.connect(catalog._uri(), uri=True)
        try:
            conn.execute("DELETE FROM products")
        finally:
            conn.close()


def test_terms_fold_plurals_and_ing_forms() -> None:
    assert mcp_server.terms("Noise-cancelling headphones") == mcp_server.terms("noise canceling headphone")


def test_data_files_ship_inside_the_package() -> None:
    assert mcp_server.DATA_DIR.parent == Path(mcp_server.__file__).resolve().parent
    assert set(mcp_server.load_policies()) == {"returns", "shipping", "warranty", "privacy"}
    assert len(mcp_server.load_faq()) >= 10


async def test_stdio_transport(shop_db: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "msev15.mcp_server", "--transport", "stdio", "--db", str(shop_db)],
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"},
    )
    async with Client(params) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        result = await client.call_tool("get_product", {"sku": "HDP-NC100"})
    assert names == EXPECTED_TOOLS
    assert not result.is_error


def test_arguments() -> None:
    args = mcp_server.parse_args(["--transport", "stdio", "--db", "x.db", "--tenant", "t1"])
    assert args.transport == "stdio" and args.tenant == "t1" and args.db == "x.db"


def test_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    args = mcp_server.parse_args([])
    assert (args.host, args.port, args.tenant) == ("localhost", 8000, "default")
    monkeypatch.setenv("MCP_HOST", "0.0.0.0")
    monkeypatch.setenv("MCP_PORT", "8123")
    args = mcp_server.parse_args([])
    assert (args.host, args.port) == ("0.0.0.0", 8123)
