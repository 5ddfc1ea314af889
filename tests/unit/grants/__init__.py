"""Unit tests of grants (pure code, nothing started)."""
