"""Delegation in the worker (decisions and the parent-to-child cascade). Imports its modules."""

from streams.delegation.cascade import Delegations

__all__ = ["Delegations"]
