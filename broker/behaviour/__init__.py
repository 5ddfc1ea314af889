"""Behaviour analytics, the pure part: profiles, detectors and their reports."""
