"""Unit tests of policy (pure code, nothing started)."""
