"""The audit (pure): hash chains, records, redaction, verification, replay, views, what-if."""
