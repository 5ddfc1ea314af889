"""MCP tool calls guarded by grants: the server middleware (guard) and the agent helper (agent)."""
