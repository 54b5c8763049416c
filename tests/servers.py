"""Serve an ASGI app under real Hypercorn on a free 127.0.0.1 port, inside the test's event loop."""

from msev15.eval.loopback import bound_socket, serve_on_loopback

__all__ = ["bound_socket", "serve_on_loopback"]
