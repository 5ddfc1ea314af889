"""Unit tests of audit (pure code, nothing started)."""
