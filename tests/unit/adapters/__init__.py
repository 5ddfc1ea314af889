"""Unit tests of adapter helpers that need no service (pure code, nothing started)."""
