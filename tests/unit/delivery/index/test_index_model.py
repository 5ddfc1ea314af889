"""The grant index against a plain model: any sequence of grants issued, renewed and ended, over
several agents, scopes and resources, answers every check as the model does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.adapters.kafka.bus import Record
from broker.sdk.resource.index import GrantIndex
from schemas.events import GrantIssued, GrantReleased, GrantRenewed, WireModel

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
AGENTS = ("a-1", "a-2")
SCOPES = ("payments:accounts.freeze", "crm:customer.pii.read", "payments:accounts.read")
RESOURCES = ("acct-1", "acct-2")

step = st.tuples(
    st.sampled_from(("issue", "renew", "end")),
    st.integers(0, 7),  # grant number
    st.sampled_from(AGENTS),
    st.lists(st.sampled_from(SCOPES), min_size=1, max_size=2, unique=True),
    st.lists(st.sampled_from(RESOURCES), max_size=2, unique=True),
    st.integers(-30, 600),  # life (s) from NOW: negative is already expired
)


def _record(event: WireModel, offset: int) -> Record:
    key = getattr(event, "agent_id", "").encode()
    return Record("permbroker.grants", 0, offset, 0, event, None, None, key, authentic=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=40))
def test_any_sequence_answers_as_the_model(steps: list[tuple]) -> None:  # type: ignore[type-arg]
    """Issue, renew (later expiry only) and end in any order; ended ids never come back."""
    index, model, ended = GrantIndex(), {}, set()  # model: grant id -> GrantIssued
    for offset, (kind, n, agent, scopes, resources, life) in enumerate(steps):
        gid = f"g-{agent}-{n}"
        held = model.get(gid)
        if kind == "issue":
            event: WireModel = GrantIssued(
                grant_id=gid, agent_id=agent, request_id=f"r-{gid}", scopes=tuple(scopes),
                resources=tuple(resources), issued_at=NOW,
                expires_at=NOW + timedelta(seconds=life), policy_revision="sha256:ab",
                rules=("r",))
            if gid not in ended:
                model[gid] = event  # type: ignore[assignment]
        elif kind == "renew" and held is not None:
            expires = NOW + timedelta(seconds=life)
            event = GrantRenewed(
                grant_id=gid, agent_id=held.agent_id, request_id=f"n-{gid}-{offset}",
                scopes=held.scopes, resources=held.resources, renewed_at=NOW,
                previous_expires_at=held.expires_at, expires_at=expires,
                policy_revision="sha256:ab", rules=("r",))
            if expires > held.expires_at:
                model[gid] = held.model_copy(update={"expires_at": expires})
        else:
            event = GrantReleased(grant_id=gid, agent_id=held.agent_id if held else agent,
                                  released_at=NOW)
            model.pop(gid, None)
            ended.add(gid)
        index.apply(_record(event, offset))
        for a in AGENTS:
            for scope in SCOPES:
                for resource in RESOURCES:
                    live = [g for g in model.values() if g.agent_id == a and scope in g.scopes
                            and (not g.resources or resource in g.resources)
                            and g.expires_at > NOW]
                    assert bool(index.allows(a, scope, resource, NOW)) == bool(live), \
                        (a, scope, resource, steps[:offset + 1])
            mine = {g.grant_id for g in model.values() if g.agent_id == a and g.expires_at > NOW}
            assert {v.grant.grant_id for v in index.active(a, NOW) if v.grant} == mine
