"""`python -m msev15.mcp_server`: serve the shop's catalog, policies and FAQ over MCP."""

from msev15.mcp_server.server import main

main()
