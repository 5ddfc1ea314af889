"""CLI commands of the audit: tail, verify, export, replay, timeline, keys, seal."""
