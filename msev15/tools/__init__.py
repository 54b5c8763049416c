"""What the agent can do: the tool registry and the local and remote tools."""
