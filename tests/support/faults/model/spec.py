"""What the property model knows from the policy text alone. Imports schemas.

The fraud policy's two classes as the model's agents see them (ceilings, rule maxima, caps), the
scope sets and risk signals the rules draw, and what the model remembers of each grant. Written
from tests/support/faults/bundles.py and policies/fraud/policy.yaml, never from the code under
test. ``COUNTS`` tallies rules and outcomes for the report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.events import (
    OPERATOR_REVOKE_KIND,
    GrantExpired,
    GrantIssued,
    GrantReleased,
    GrantRevoked,
)

FRAUD, REPORT = "fraud-detection", "reporting"
AGENTS = {"pa-fraud-1": FRAUD, "pa-fraud-2": FRAUD, "pa-fraud-3": FRAUD, "pa-report-1": REPORT,
          "pa-report-2": REPORT}
CEILING = {FRAUD: ("payments:transactions.*", "payments:accounts.*", "crm:customer.pii.read"),
           REPORT: ("reports:ledger.*", "reports:summaries.*")}
RULE_MAX_S = {FRAUD: 20, REPORT: 8}  # max_duration of the one granting rule of each class
CAP_S = {FRAUD: 60, REPORT: 8}  # max_total_duration (reporting: not set, so its max_duration)
# Scope sets asked for: most fit one class's granting rule, some reach beyond every ceiling.
SCOPE_SETS = (("payments:accounts.freeze",), ("crm:customer.pii.read", "payments:accounts.freeze"),
              ("reports:ledger.export",), ("crm:customer.pii.read",),
              ("admin:root.all", "reports:ledger.export"), ("payments:accounts.close",),
              ("payments:accounts.freeze", "reports:ledger.export"))
FITTING = {FRAUD: SCOPE_SETS[:2] + SCOPE_SETS[3:4], REPORT: SCOPE_SETS[2:3]}  # a rule grants these
# (kind, severity) -> quarantine seconds if it revokes, None if it only raises live risk.
SIGNALS: dict[tuple[str, float], int | None] = {  # chosen by SIGNAL_PICKS (quarantines rarer)
    ("behaviour_anomaly", 0.95): 600, ("compromise_suspected", 0.5): 3600,
    ("model_changed", 0.1): 0, (OPERATOR_REVOKE_KIND, 1.0): 0,
    ("behaviour_anomaly", 0.75): None, ("behaviour_anomaly", 0.3): None,
}
SIGNAL_PICKS = (("behaviour_anomaly", 0.3), ("model_changed", 0.1), ("behaviour_anomaly", 0.75),
                (OPERATOR_REVOKE_KIND, 1.0), ("behaviour_anomaly", 0.3), ("model_changed", 0.1),
                ("behaviour_anomaly", 0.3), ("behaviour_anomaly", 0.95),
                ("compromise_suspected", 0.5))
GUARD = timedelta(milliseconds=300)  # grants this close to expiry are not compared (clock race)
MAX_WAIT = timedelta(seconds=2.5)  # the longest the model lets time pass in one step
ENDS = (GrantExpired, GrantRevoked, GrantReleased)
COUNTS: Counter[str] = Counter()


def within(scope: str, patterns: tuple[str, ...]) -> bool:
    """The ceiling test, from the policy text: exact, or a ``.*`` wildcard on the prefix."""
    return any(scope == p or (p.endswith("*") and scope.startswith(p[:-1])) for p in patterns)


def fitting(cls: str, scopes: tuple[str, ...]) -> tuple[str, ...]:
    """A scope set a rule of ``cls`` grants, chosen by ``scopes``."""
    fits = FITTING[cls]
    return fits[SCOPE_SETS.index(scopes) % len(fits)]


@dataclass
class Held:
    """What the model knows of one grant."""

    grant: GrantIssued
    expires_at: datetime
    cap: datetime
    ended: str = ""  # "revoked", "released", or "" (expiry is judged by time)

    def live(self, at: datetime) -> bool:
        """Not ended and not expired at ``at``."""
        return not self.ended and self.expires_at > at


def check_end(held: Held, ev: GrantExpired | GrantRevoked | GrantReleased, now: datetime) -> None:
    """An announced end: an expiry only of a grant really due and not ended otherwise; a
    revocation or release marks the grant (identical copies of one are at-least-once)."""
    if isinstance(ev, GrantExpired):
        assert not held.ended, f"expiry announced for a {held.ended} grant {ev.grant_id}"
        assert held.expires_at <= now, f"{ev.grant_id} announced expired before its time"
        COUNTS["expiries announced"] += 1
        return
    ended = "revoked" if isinstance(ev, GrantRevoked) else "released"
    assert held.ended in ("", ended), f"{ended} announced for a {held.ended} grant {ev.grant_id}"
    held.ended = ended
