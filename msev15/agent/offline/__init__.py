"""The built-in offline model: reads the conversation with an intent table and calls the real tools."""
