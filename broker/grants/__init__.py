"""Grants, the pure part: decisions, renewal and release, approvals, budgets, selection."""
