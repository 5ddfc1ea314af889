"""Audit I/O (L2): the sealer, reading the sealed log, verifying it, the audit's keys on disk."""
