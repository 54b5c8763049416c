"""The bundled MCP server: product catalog, shop policies and FAQ as tools over streamable HTTP or stdio.

Run it with `python -m msev15.mcp_server [--host H] [--port P] [--transport stdio] [--db PATH|URL]`.
The catalog is read read-only from the orders database; policies and FAQ ship beside this module
in `data/`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from msev15.logs import configure_stream_logging
from msev15.mcp_server.catalog import (
    MAX_PRODUCT_RESULTS,
    Catalog,
    CatalogUnavailable,
    Sort,
    is_database_url,
    product_view,
    read_query,
)
from msev15.tracing import configure_tracing, shutdown_tracing

__all__ = ["Catalog", "CatalogUnavailable", "build_server", "main", "product_view"]

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_HOST = "localhost"
DEFAULT_PORT = 8000
MCP_PATH = "/mcp"
POLICY_TOPICS = ("returns", "shipping", "warranty", "privacy")
MAX_FAQ_RESULTS = 3
MAX_QUERY_CHARS = 200

INSTRUCTIONS = (
    "Shop knowledge for the customer-service assistant: search and look up products (price, stock), "
    "read the shop's returns, shipping, warranty and privacy policies, and search the FAQ. "
    "Results are JSON; quote prices and policy terms exactly as given."
)


def compact(value: Any) -> str:
    """Compact JSON text: tool results go into the model's context, so every byte counts."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# Search: simple term overlap ------------------------------------------------------------

_WORD_RE = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from have how i in is it me my of on or our sell "
    "the to what when where which with you your we any there this that do have get got buy".split()
)


def _stem(word: str) -> str:
    """Fold plural and -ing forms together so "headphones" finds "headphone" and "cancelling" "cancel"."""
    if len(word) > 5 and word.endswith("ing"):
        word = word[:-3]
        if len(word) > 3 and word[-1] == word[-2]:
            word = word[:-1]
    elif len(word) > 6 and word.endswith("ally"):  # "internationally" finds "international"
        word = word[:-2]
    elif len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    return word


def terms(text: str) -> set[str]:
    """The searchable terms of a text: lower-cased words, stop words dropped, lightly stemmed."""
    return {_stem(w) for w in _WORD_RE.findall(text.lower()) if w not in _STOPWORDS}


def overlap_score(query: set[str], weighted_fields: Iterable[tuple[str, float]]) -> float:
    """Sum of field weights for each query term a field contains; 0 means no match at all."""
    score = 0.0
    for text, weight in weighted_fields:
        score += weight * len(query & terms(text))
    return score


def _clean_query(query: str) -> str:
    query = query.strip()[:MAX_QUERY_CHARS]
    if not query:
        raise ToolError("The query is empty: give a few words describing what to look for.")
    return query


# Policies and FAQ (package data) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaqEntry:
    id: str
    question: str
    answer: str
    tags: tuple[str, ...]


@cache
def load_policies() -> dict[str, dict[str, Any]]:
    """The shop policies, keyed by topic, from the data file shipped with the package."""
    data: dict[str, dict[str, Any]] = json.loads((DATA_DIR / "policies.json").read_text("utf-8"))
    return data


@cache
def load_faq() -> tuple[FaqEntry, ...]:
    """The FAQ entries from the data file shipped with the package."""
    raw = json.loads((DATA_DIR / "faq.json").read_text("utf-8"))
    return tuple(FaqEntry(e["id"], e["question"], e["answer"], tuple(e.get("tags", ()))) for e in raw)


def search_faq_entries(query: str, limit: int = MAX_FAQ_RESULTS) -> list[FaqEntry]:
    """The best-matching FAQ entries by term overlap, best first."""
    wanted = terms(query)
    scored = []
    for index, entry in enumerate(load_faq()):
        score = overlap_score(
            wanted, ((entry.question, 2.0), (" ".join(entry.tags), 2.0), (entry.answer, 1.0))
        )
        if score > 0:
            scored.append((-score, index, entry))
    scored.sort()
    return [entry for _, _, entry in scored[:limit]]


# The server -------------------------------------------------------------------------------

QueryArg = Annotated[
    str,
    Field(min_length=1, max_length=MAX_QUERY_CHARS, description="A few words describing what to look for."),
]


def build_server(db_path: Path | str, tenant_id: str = "default") -> MCPServer:
    """The MCP server with the shop tools."""
    # Long by design: the four tool declarations, each next to the schema the clients see.
    catalog = Catalog(db_path, tenant_id)
    server: MCPServer = MCPServer("msev15-shop", instructions=INSTRUCTIONS, version="1.0")

    @server.tool(
        description=(
            "Search the shop's product catalog by keywords (product type, feature, category or SKU). "
            f"Returns up to {MAX_PRODUCT_RESULTS} products that match every keyword, best match first, each "
            "with sku, name, category, description, price (USD) and stock. Words such as 'cheapest' or "
            "'under $50' in the query (or the sort and max_price arguments) order and filter by price. "
            "Use it for questions like 'do you sell ...?', 'how much is ...?' or 'what is the cheapest ...?'."
        ),
        structured_output=False,
    )
    async def search_products(
        query: Annotated[
            str,
            Field(
                min_length=1,
                max_length=MAX_QUERY_CHARS,
                description="Keywords, e.g. 'noise cancelling headphones' or 'cheapest usb-c charger'.",
            ),
        ],
        sort: Annotated[
            Sort | None,
            Field(description="'relevance' (default), 'price_low_to_high' or 'price_high_to_low'."),
        ] = None,
        max_price: Annotated[
            float | None, Field(gt=0, description="Only products at or below this price, in USD.")
        ] = None,
    ) -> str:
        query = _clean_query(query)
        wanted = read_query(query, max_price, sort)
        found = await catalog.search(wanted)
        body: dict[str, Any] = {"query": query, "count": len(found), "products": found}
        if wanted.sort != "relevance":
            body["sorted_by"] = wanted.sort
        if wanted.max_price_cents is not None:
            body["max_price"] = f"{wanted.max_price_cents / 100:.2f}"
        if not found:
            body["message"] = f"No products match {query!r}."
        return compact(body)

    @server.tool(
        description=(
            "Get one product by its exact SKU (for example 'HDP-NC100'): name, description, category, "
            "price (USD), stock and whether it is in stock. Use search_products first if the SKU is unknown."
        ),
        structured_output=False,
    )
    async def get_product(
        sku: Annotated[
            str, Field(min_length=1, max_length=64, description="The product's SKU, e.g. 'HDP-NC100'.")
        ],
    ) -> str:
        product = await catalog.get(sku)
        if product is None:
            raise ToolError(f"Not found: there is no product with SKU {sku.strip()!r}. Use search_products.")
        return compact(product)

    @server.tool(
        description=(
            "Read one of the shop's policies: 'returns' (30-day returns and refunds), 'shipping' "
            "(delivery times and costs), 'warranty' (2-year warranty) or 'privacy' (personal data). "
            "Returns the title, a one-line summary and the detailed terms."
        ),
        structured_output=False,
    )
    async def get_policy(
        topic: Annotated[
            str,
            Field(
                description="The policy topic: one of 'returns', 'shipping', 'warranty', 'privacy'.",
                json_schema_extra={"enum": list(POLICY_TOPICS)},
            ),
        ],
    ) -> str:
        key = topic.strip().lower()
        policy = load_policies().get(key)
        if policy is None:
            raise ToolError(f"Unknown policy topic {topic!r}: choose one of {', '.join(POLICY_TOPICS)}.")
        return compact({"topic": key, **policy})

    @server.tool(
        description=(
            "Search the shop's frequently asked questions (orders, tracking, delivery, payment, returns, "
            "refunds, warranty, privacy, contact). Returns up to 3 matching questions with their answers, "
            "best first."
        ),
        structured_output=False,
    )
    async def search_faq(query: QueryArg) -> str:
        query = _clean_query(query)
        found = search_faq_entries(query)
        entries = [{"id": e.id, "question": e.question, "answer": e.answer} for e in found]
        if not entries:
            return compact(
                {"query": query, "count": 0, "results": [], "message": f"No FAQ entry matches {query!r}."}
            )
        return compact({"query": query, "count": len(entries), "results": entries})

    return server


# Running -------------------------------------------------------------------------------


def _default_db() -> Path | str:
    """The service's own database: DATABASE_URL when set, else the file of ORDER_DB_PATH."""
    from msev15.settings import load_settings

    settings = load_settings()
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return settings.order_db_path


def _env_port(name: str, default: int, warnings: list[str]) -> int:
    """A port from the environment; a Kubernetes service link (`tcp://10.0.0.7:8000`) gives its port."""
    from msev15.settings import service_link_port, service_link_warning

    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    port = service_link_port(raw)
    if port is not None:
        warnings.append(service_link_warning(name, raw, port))
        return port
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise SystemExit(f"{name}={raw!r} is not a port (1-65535)")
    return int(raw)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m msev15.mcp_server", description=__doc__.splitlines()[0])
    warnings: list[str] = []
    parser.set_defaults(start_warnings=warnings)
    parser.add_argument("--host", default=os.environ.get("MCP_HOST", DEFAULT_HOST))
    parser.add_argument("--port", type=int, default=_env_port("MCP_PORT", DEFAULT_PORT, warnings))
    parser.add_argument("--transport", choices=("http", "streamable-http", "stdio"), default="http")
    parser.add_argument(
        "--db",
        default=None,
        help="orders database: a SQLite file or a postgresql:// URL (default: the service's)",
    )
    parser.add_argument("--tenant", default="default", help="the tenant whose catalog is served")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO").upper())
    return parser.parse_args(argv)


HEALTH_PATH = "/health"


async def _health(request: Any) -> Any:
    """`GET /health`: the process serves HTTP (a container health check; no MCP session needed)."""
    from starlette.responses import JSONResponse

    return JSONResponse({"status": "healthy"})


async def serve_http(server: MCPServer, host: str, port: int) -> None:
    """Serve streamable HTTP at /mcp (and GET /health) under Hypercorn until SIGINT or SIGTERM."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    server.custom_route(HEALTH_PATH, methods=["GET"], include_in_schema=False)(_health)
    app = server.streamable_http_app(streamable_http_path=MCP_PATH, host=host)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = 2.0  # clients keep a GET stream open; do not wait long for it
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our handlers, not a second stream
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    log.info("MCP server listening on http://%s:%d%s", host, port, MCP_PATH)
    app_any: Any = app
    await serve(app_any, config, shutdown_trigger=stop.wait)


def main(
    argv: Sequence[str] | None = None, build: Callable[[Path | str, str], MCPServer] = build_server
) -> None:
    """Run the server; `build` lets a test serve extra tools through the same start-up."""
    args = parse_args(argv)
    # The service's JSON lines; on stdout, except under stdio, where stdout carries the protocol.
    configure_stream_logging(args.log_level, sys.stderr if args.transport == "stdio" else sys.stdout)
    for warning in args.start_warnings:
        log.warning(warning)
    # With OTEL_EXPORTER_OTLP_ENDPOINT set, each tool call is a span in the calling request's trace:
    # the SDK reads the caller's `traceparent` from the request's `_meta`.
    configure_tracing("msev15-mcp")
    db_path: Path | str = _default_db() if args.db is None else args.db
    if not is_database_url(db_path):
        db_path = Path(db_path)
    server = build(db_path, args.tenant)
    if isinstance(db_path, Path) and not db_path.exists():
        log.warning("orders database %s does not exist yet: product tools answer 'not available'", db_path)
    if args.transport == "stdio":
        server.run("stdio")
        return
    try:
        with suppress(KeyboardInterrupt):
            asyncio.run(serve_http(server, args.host, args.port))
    finally:
        shutdown_tracing()
