"""Unit tests of delivery (pure code, nothing started)."""
