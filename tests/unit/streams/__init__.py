"""Unit tests of streams (pure code, nothing started)."""
