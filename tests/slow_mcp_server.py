"""The bundled MCP server plus one slow tool, for timeout tests (`python -m tests.slow_mcp_server`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mcp.server.mcpserver import MCPServer

from msev15.mcp_server.server import build_server, compact, main


def build_slow(db_path: Path, tenant_id: str) -> MCPServer:
    server = build_server(db_path, tenant_id)

    @server.tool(description="Test only: answer after sleeping `seconds`.", structured_output=False)
    async def slow_echo(text: str, seconds: float = 5.0) -> str:
        await asyncio.sleep(seconds)
        return compact({"echo": text})

    return server


if __name__ == "__main__":
    main(build=build_slow)
