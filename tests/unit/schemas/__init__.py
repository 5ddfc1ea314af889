"""Unit tests of the wire contract (pure code, nothing started)."""
