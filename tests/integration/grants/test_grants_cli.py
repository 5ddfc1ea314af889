"""The operator's grant commands: whole copyable ids, ``grants show`` by id or unique prefix."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from broker.config import Settings
from tests.support.audit import cli
from tests.support.identities import agent_client

pytestmark = pytest.mark.integration
FREEZE = "payments:accounts.freeze"



def test_grants_list_prints_whole_ids_and_show_finds_a_grant_by_id_or_prefix(
    worker: object, settings: Settings, agents: Callable[[str], str],
) -> None:
    """On 80 columns the list still prints the whole grant id; ``grants show`` needs no
    --agent, takes a unique prefix, and prints times in the one format (ISO UTC with Z and the
    humanised time left)."""
    agent = agents("f")
    with agent_client(settings, agent) as client:
        d = client.request_escalation([FREEZE], resources=["acct-1"], duration_s=600,
                                      reason="pattern", confidence=0.95, risk_score=0.9)
    assert d.outcome == "granted" and d.grant_id is not None
    listed = cli(settings, "grants", "list", "--agent", agent, columns=80)
    assert listed.returncode == 0, listed.output
    assert d.grant_id in listed.stdout and agent in listed.stdout
    shown = cli(settings, "grants", "show", d.grant_id[:20], "--json")
    assert shown.returncode == 0, shown.output
    assert json.loads(shown.stdout)["grant_id"] == d.grant_id
    whole = cli(settings, "grants", "show", d.grant_id)
    assert whole.returncode == 0 and f"grant_id: {d.grant_id}" in whole.stdout
    assert re.search(r"expires_at: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in \d+[dhms]( \d+[hms])?\)",
                     whole.stdout), whole.stdout
    missing = cli(settings, "grants", "show", "grant-nope")
    assert missing.returncode == 1 and "no active grant grant-nope" in missing.stderr
