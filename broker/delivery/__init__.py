"""Delivery to enforcement points (pure): routing, consistency, freshness, propagation."""
