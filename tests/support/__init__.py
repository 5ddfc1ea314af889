"""Test support: services, factories, waits and identities shared by the suites."""
