"""The operator console in a real browser."""
