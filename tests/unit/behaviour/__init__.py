"""Unit tests of behaviour (pure code, nothing started)."""
