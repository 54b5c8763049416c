"""The bundled MCP server: catalog, policies and FAQ of the shop (`python -m msev15.mcp_server`)."""
