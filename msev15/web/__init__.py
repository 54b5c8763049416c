"""The edge: the only code that knows HTTP and WebSocket (Quart lives here and nowhere below)."""
