"""The operator SDK: revoke, change the registry, revoke by selector, vote on approvals."""
