"""Unit tests of identity (pure code, nothing started)."""
