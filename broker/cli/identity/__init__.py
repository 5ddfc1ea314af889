"""CLI commands of identity: agents, keys, the inventory, behaviour profiles."""
