"""MCP tool calls guarded by grants: the server middleware and the agent-side helper."""
