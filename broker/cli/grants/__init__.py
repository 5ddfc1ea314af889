"""CLI commands of grants: inspect, revoke and rebuild grants, revoke by selector, approvals."""
