"""Redis-held figures: behaviour profiles, the census of live grants. Imports adapters, core."""
