"""The worker's metrics on the live stack: the decision histograms count the decisions made, the
active-grants gauge counts the grants alive in the view (read independently, agent by agent)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from broker.adapters.kafka.bus import Publisher
from broker.adapters.redis import keyspace as keys
from broker.config import Settings
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import GrantIssued
from tests.support.factories import anomaly
from tests.support.identities import Registrar, agent_client
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

# sample name -> {labels (sorted items) -> value}
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape_text(port: int) -> str:
    """The exposition text the worker on ``port`` serves now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def scrape(port: int) -> Samples:
    """Every sample the worker on ``port`` serves now."""
    out: Samples = {}
    for family in text_string_to_metric_families(scrape_text(port)):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for key, v in samples.get(name, {}).items()
               if all((k, val) in key for k, val in labels.items()))


COMMIT, PUBLISH = "permbroker_decision_commit_seconds", "permbroker_decision_publish_seconds"


def decided(samples: Samples) -> dict[str, float]:
    """The decision counts the worker serves: the histograms' and the counter's by outcome."""
    return {"commit": total(samples, f"{COMMIT}_count"),
            "publish": total(samples, f"{PUBLISH}_count"),
            "granted": total(samples, "permbroker_decisions_total", outcome="granted"),
            "denied": total(samples, "permbroker_decisions_total", outcome="denied")}


def alive_by_namespace(client: redis.Redis) -> Counter[str]:
    """Grants alive now, by namespace, read from each agent's own grant index and grant."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    out: Counter[str] = Counter()
    for key in client.scan_iter(match=f"{keys.PREFIX}:{{*}}:grants", count=500):
        text = key.decode()
        agent = text[text.index("{") + 1: text.rindex("}")]
        for gid in client.zrangebyscore(key, f"({now_ms}", "+inf"):
            raw = client.get(keys.grant(agent, gid.decode()))
            if raw is None or not client.exists(keys.life(agent, gid.decode())):
                continue
            grant = GrantIssued.model_validate_json(raw)
            for ns in sorted({s.split(":", 1)[0] for s in grant.scopes}):
                out[ns] += 1
    return out


def gauge_by_namespace(samples: Samples) -> Counter[str]:
    """The active-grants gauge, summed over agent classes."""
    out: Counter[str] = Counter()
    for labels, value in samples.get("permbroker_worker_active_grants", {}).items():
        out[dict(labels)["namespace"]] += int(value)
    return out


def test_the_decision_histograms_count_the_decisions_made(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str]
) -> None:
    """Three grants and two denials: each histogram counts five more, the counter 3 + 2."""
    before = decided(scrape(settings.metrics_port))
    agent = agents("f")
    outcomes = []
    with agent_client(settings, agent) as client:
        for n in range(5):
            scopes = ["payments:accounts.freeze"] if n % 2 == 0 else ["crm:customer.delete"]
            outcomes.append(client.request_escalation(
                scopes, resources=[f"acct-{n}"], duration_s=20, reason="metrics", risk_score=0.93,
                confidence=0.95).outcome)
    assert outcomes == ["granted", "denied", "granted", "denied", "granted"]
    expected = {"commit": 5, "publish": 5, "granted": 3, "denied": 2}

    def grown() -> dict[str, float] | None:
        now = decided(scrape(settings.metrics_port))
        diff = {k: now[k] - before[k] for k in now}
        return diff if diff["publish"] >= 5 else None

    assert wait_until(grown, 10, "the five decisions counted") == expected
    after = scrape(settings.metrics_port)
    assert total(after, f"{COMMIT}_count") == total(after, "permbroker_decisions_total")


def test_the_active_grants_gauge_counts_the_grants_alive(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str],
    rclient: redis.Redis, registrar: Registrar,
) -> None:
    """After two grants, and after one of them is revoked, the gauge (by class and namespace)
    equals the grants alive in Redis read agent by agent; ours are among them."""
    agent = agents("f")
    with agent_client(settings, agent) as client:
        grants = [client.request_escalation(
            ["payments:accounts.freeze"], resources=[f"acct-{n}"], duration_s=20, risk_score=0.93,
            reason="metrics", confidence=0.95) for n in range(2)]
    assert all(g.outcome == "granted" and g.grant_id for g in grants)

    def agree() -> Counter[str] | None:
        alive, served = alive_by_namespace(rclient), gauge_by_namespace(
            scrape(settings.metrics_port))
        return served if served == alive else None

    with_ours = wait_until(agree, 10, "the gauge equal to the grants alive")
    assert with_ours["payments"] >= 2
    ours = scrape(settings.metrics_port)["permbroker_worker_active_grants"]
    assert any(dict(k)["agent_class"] == "fraud-detection" and v >= 2 for k, v in ours.items())
    registrar.operator.revoke_grant(agent, str(grants[0].grant_id), reason="metrics test")
    assert not rclient.exists(keys.life(agent, str(grants[0].grant_id)))
    wait_until(agree, 10, "the gauge equal to the grants alive after a revocation")


DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "permbroker-workers.json"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                                                            "_created"), "gauge": ("",)}


def served_names(text: str) -> set[str]:
    """Every sample name the exposition text can serve, samples or not yet (by family type)."""
    out = set()
    for family in text_string_to_metric_families(text):
        out |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        out |= {s.name for s in family.samples}
    return out


def test_every_dashboard_query_names_metrics_a_live_worker_serves(
    worker: WorkerProcess, settings: Settings
) -> None:
    """Each PromQL expression of deploy/grafana/ names a metric, and each metric it names is in
    the live worker's /metrics."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert len(exprs) >= len(panels) >= 10
    named = [set(re.findall(r"\bpermbroker_[a-zA-Z0-9_:]+", e)) for e in exprs]
    assert all(named), [e for e, n in zip(exprs, named, strict=True) if not n]
    served = served_names(scrape_text(settings.metrics_port))
    missing = set().union(*named) - served
    assert not missing, f"not in the worker's /metrics: {sorted(missing)}"


def test_the_scrape_time_probes_answer_and_follow_the_stack(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str],
    publisher: Publisher, rclient: redis.Redis,
) -> None:
    """Every probe answers; a quarantined agent is counted; the consumer lag of the escalation
    partitions and the sealer's lag come back to 0 once the worker has caught up."""
    agent = agents("f")
    publisher.publish(topics.RISK.name, anomaly(agent))  # revoke-on-behaviour-anomaly: 10m
    wait_until(lambda: rclient.exists(keys.quarantine(agent)), 10, "the agent quarantined")

    def quarantined() -> float | None:
        served = total(scrape(settings.metrics_port), "permbroker_worker_quarantined_agents")
        direct = sum(1 for _ in rclient.scan_iter(match=keys.quarantine("*"), count=1000))
        return served if served == direct and served >= 1 else None

    wait_until(quarantined, 10, "the quarantined agents counted")
    samples = scrape(settings.metrics_port)
    assert {dict(k)["probe"]: v for k, v in samples["permbroker_worker_probe_up"].items()} == {
        "grants": 1, "quarantine": 1, "consumer-lag": 1, "sealer-lag": 1}
    lag = samples["permbroker_worker_consumer_lag"]
    assert {dict(k)["topic"] for k in lag} >= {topics.ESCALATIONS.name, topics.RISK.name}
    assert samples["permbroker_worker_sealer_lag"], "the worker seals no partition"
    wait_until(lambda: total(scrape(settings.metrics_port), "permbroker_worker_consumer_lag",
                             topic=topics.ESCALATIONS.name) == 0, 20, "escalations caught up")
    wait_until(lambda: total(scrape(settings.metrics_port), "permbroker_worker_sealer_lag")
               == 0, 20, "the sealer caught up")


def test_the_worker_logs_each_decision_as_a_json_line_with_its_ids(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str]
) -> None:
    """The worker's log (not a terminal: JSON) has the decision's line with the agent, request
    and grant ids and the message's origin and event id."""
    agent = agents("f")
    with agent_client(settings, agent) as client:
        d = client.request_escalation(["payments:accounts.freeze"], resources=["acct-1"],
                                      duration_s=20, reason="logs", confidence=0.95,
                                      risk_score=0.93)
    assert d.outcome == "granted"

    def line() -> dict[str, object] | None:
        for text in worker.log_text().splitlines():
            if d.request_id in text and text.startswith("{"):
                entry: dict[str, object] = json.loads(text)
                if entry["event"] == "decided: granted":
                    return entry
        return None

    entry = wait_until(line, 10, "the decision's log line")
    assert (entry["agent_id"], entry["grant_id"], entry["level"]) == (agent, d.grant_id, "info")
    assert str(entry["origin"]).startswith(f"{topics.ESCALATIONS.name}/")
    assert entry["event_id"] and entry["logger"] == "permbroker.worker"
