"""Policy tests (``permbroker policy test DIR``): fixtures that pin what a bundle decides.

Imports broker.grants, broker.policy (loader, fields, source), broker.errors, schemas, stdlib.
In the spirit of ``opa test`` and Cerbos's policy tests: each case gives an agent, a request (or
a risk signal), the agent's live risk and state and the time, and expects a decision and its
reasons. Cases run through ``Policy.evaluate`` and ``decide`` exactly as the worker does, so a
fixture pins the whole decision, state denials included. Reading the fixture files is the only
I/O; every failure names the fixture file and line, the test, and the rules that decided.

A bundle's fixtures live in its ``tests/`` subdirectory (the bundle loader reads only top-level
files), one or more YAML files of ``kind: PolicyTest``::

    apiVersion: permbroker/v1
    kind: PolicyTest
    now: "2026-11-28T10:00:00Z"          # optional default time of every case
    tests:
      - name: a confident fraud agent may freeze the accounts it flagged
        agent: fraud-detector-7          # an agent of the bundle's directory
        request: {scopes: [payments:accounts.freeze], resources: [acct-1], duration: 15m,
                  confidence: 0.95, risk_score: 0.9}
        risk: {agent: 0.0}               # the agent's live risk (optional)
        state: {quarantined_for: 10m, revoked_ago: 1m}   # optional
        expect: {outcome: granted, granted: [payments:accounts.freeze], duration: 20s,
                 clamped_by: fraud-freeze-on-pattern, rules: [fraud-freeze-on-pattern]}
      - name: an anomaly revokes and quarantines
        agent: fraud-detector-7
        signal: {kind: behaviour_anomaly, severity: 0.95}
        expect: {revoke: true, rule: revoke-on-behaviour-anomaly, quarantine: 10m}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from broker.errors import PolicyError
from broker.grants.decide import AgentState, decide
from broker.policy import Policy, RiskContext, load_policy
from broker.policy.fields import At, check_fields, parse_duration
from broker.policy.source import BUNDLE_SUFFIXES, LineList, LineMap, parse_yaml
from schemas.events import EscalationDecided, EscalationRequested, RiskObserved

TESTS_DIR = "tests"
KIND = "PolicyTest"
DEFAULT_NOW = datetime(2026, 1, 1, tzinfo=UTC)
_CASE = ("name", "agent", "request", "signal", "risk", "state", "now", "expect")
_DECISION_EXPECT = ("outcome", "granted", "denied", "duration", "clamped_by", "rules", "reasons")
_SIGNAL_EXPECT = ("revoke", "rule", "quarantine")


@dataclass(frozen=True)
class CaseResult:
    """One fixture case: where it is, whether it passed, and why not."""

    file: str
    line: int
    name: str
    failures: tuple[str, ...]
    decided: str

    @property
    def passed(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        where = f"{self.file}:{self.line} test {self.name!r}"
        if self.passed:
            return f"PASS {where}"
        return f"FAIL {where}: {'; '.join(self.failures)}\n     decided: {self.decided}"


@dataclass
class SuiteResult:
    """Every case of a bundle's fixtures, and fixtures that could not be read."""

    bundle: str
    revision: str = ""
    cases: list[CaseResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.cases) and not self.errors and all(c.passed for c in self.cases)


def fixture_files(path: Path) -> tuple[Path, list[Path]]:
    """(bundle, fixture files) for a bundle dir (fixtures in tests/) or a fixtures dir."""
    tests = path / TESTS_DIR if (path / TESTS_DIR).is_dir() else path
    bundle = path if tests != path else path.parent
    files = sorted(p for p in tests.iterdir() if p.suffix in BUNDLE_SUFFIXES and p.is_file())
    return bundle, files


def run_suite(path: str | Path) -> SuiteResult:
    """Load the bundle and run every fixture case against it."""
    root = Path(path)
    if not root.is_dir():
        return SuiteResult(str(root), errors=[f"{root}: no such directory"])
    bundle, files = fixture_files(root)
    result = SuiteResult(str(bundle))
    if not files:
        result.errors.append(f"{bundle / TESTS_DIR}: no fixture files (*.yaml)")
        return result
    try:
        policy = load_policy(bundle)
    except PolicyError as exc:
        result.errors.append(f"the bundle does not load: {exc}")
        return result
    result.revision = policy.revision
    for file in files:
        try:
            result.cases.extend(run_fixture(policy, str(file), file.read_bytes()))
        except PolicyError as exc:
            result.errors.append(str(exc))
    return result


def run_fixture(policy: Policy, file: str, data: bytes) -> list[CaseResult]:
    """Run every case of one fixture file (raises PolicyError on a malformed fixture)."""
    out = []
    for doc in parse_yaml(data, file):
        at, body = At(file), doc.body
        check_fields(body, at, "a PolicyTest document", required=("apiVersion", "kind", "tests"),
                     optional=("description", "now"))
        if body["kind"] != KIND:
            raise at.error(f"kind {body['kind']!r}; a fixture file holds kind: {KIND}",
                           body.line_of("kind"))
        now = _time(body.get("now"), at, body.line_of("now")) if "now" in body else DEFAULT_NOW
        cases = body["tests"]
        if not isinstance(cases, LineList):
            raise at.error("'tests' must be a list of cases", body.line_of("tests"))
        for case, line in zip(cases, cases.lines, strict=True):
            if not isinstance(case, LineMap):
                raise at.error("each test must be a mapping", line)
            out.append(_run_case(policy, case, At(file, str(case.get("name", ""))), now))
    return out


def _time(value: object, at: At, line: int) -> datetime:
    try:
        when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise at.error(f"not a time: {value!r} (use e.g. 2026-11-28T10:00:00Z)", line) from exc
    if when.tzinfo is None:
        raise at.error(f"time {value!r} needs a UTC offset (e.g. Z)", line)
    return when.astimezone(UTC)


def _seconds(body: LineMap, key: str, at: At) -> int:
    raw = body.get(key)
    value = 0 if raw in (0, "0", "0s", "0m", "0h") else parse_duration(raw)
    if value is None:
        raise at.error(f"{key}: {body.get(key)!r} is not a duration (e.g. 90s, 15m)",
                       body.line_of(key))
    return value


def _mapping(body: LineMap, key: str, at: At) -> LineMap:
    value = body.get(key, LineMap(body.line_of(key)))
    if not isinstance(value, LineMap):
        raise at.error(f"{key!r} must be a mapping", body.line_of(key))
    return value


def _run_case(policy: Policy, case: LineMap, at: At, default_now: datetime) -> CaseResult:
    check_fields(case, at, "a test", required=("name", "agent", "expect"), optional=_CASE)
    if ("request" in case) == ("signal" in case):
        raise at.error("a test has either a request or a signal", case.line)
    now = _time(case["now"], at, case.line_of("now")) if "now" in case else default_now
    if "signal" in case:
        failures, decided = _signal_case(policy, case, at, now)
    else:
        failures, decided = _request_case(policy, case, at, now)
    return CaseResult(at.file, case.line, str(case["name"]), tuple(failures), decided)


def _model(kind: type[EscalationRequested] | type[RiskObserved], data: dict[str, object],
           at: At, line: int) -> EscalationRequested | RiskObserved:
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise at.error(f"invalid {kind.__name__}: {loc}: {err['msg']}", line) from exc


def _state(case: LineMap, at: At, now: datetime) -> AgentState:
    state = _mapping(case, "state", at)
    check_fields(state, at, "state", required=(),
                 optional=("quarantined_for", "quarantine_rule", "revoked_ago"))
    return AgentState(
        quarantined_until=(now + timedelta(seconds=_seconds(state, "quarantined_for", at))
                           if "quarantined_for" in state else None),
        quarantine_rule=str(state.get("quarantine_rule", "quarantine")),
        revoked_at=(now - timedelta(seconds=_seconds(state, "revoked_ago", at))
                    if "revoked_ago" in state else None),
    )


def _request_case(policy: Policy, case: LineMap, at: At,
                  now: datetime) -> tuple[list[str], str]:
    raw = _mapping(case, "request", at)
    data: dict[str, object] = {"reason": "policy test", **raw}
    data.pop("duration", None)
    data |= {"request_id": "policy-test", "agent_id": str(case["agent"]), "requested_at": now,
             "duration_s": _seconds(raw, "duration", at) if "duration" in raw else 900}
    request = _model(EscalationRequested, data, at, raw.line)
    assert isinstance(request, EscalationRequested)
    risk_map = _mapping(case, "risk", at)
    check_fields(risk_map, at, "risk", required=(), optional=("agent",))
    risk = RiskContext(agent=float(str(risk_map.get("agent", 0.0))), request=request.risk_score)
    agent = policy.agent(request.agent_id)
    decision = decide(request, policy.evaluate(request, agent, risk, now), agent=agent,
                      state=_state(case, at, now), received_at=now, now=now, risk=risk).decision
    expect = _mapping(case, "expect", at)
    check_fields(expect, at, "expect", required=(), optional=_DECISION_EXPECT)
    return _decision_failures(decision, expect, at), _describe(decision)


def _describe(d: EscalationDecided) -> str:
    parts: list[str] = [d.outcome]
    if d.granted_scopes:
        parts.append(f"granted {', '.join(d.granted_scopes)} for {d.duration_s}s"
                     + (f" (clamped by {d.clamped_by})" if d.clamped_by else ""))
    parts += [f"{x.scope} denied by rule {x.rule}: {x.reason}" for x in d.denied]
    parts.append(f"matched rules: {', '.join(d.matched_rules) or '-'}")
    return "; ".join(parts)


def _decision_failures(d: EscalationDecided, expect: LineMap, at: At) -> list[str]:
    fails: list[str] = []
    if "outcome" in expect and expect["outcome"] != d.outcome:
        fails.append(f"expected outcome {expect['outcome']}, got {d.outcome}")
    if "granted" in expect and set(_list(expect["granted"])) != set(d.granted_scopes):
        fails.append(f"expected granted {sorted(_list(expect['granted']))}, "
                     f"got {sorted(d.granted_scopes)}")
    if "duration" in expect and _seconds(expect, "duration", at) != d.duration_s:
        fails.append(f"expected duration {expect['duration']}, got {d.duration_s}s")
    if "clamped_by" in expect:
        want, got = expect["clamped_by"], d.clamped_by
        if (want is None) != (got is None) or (want and str(want) not in str(got)):
            fails.append(f"expected clamped_by {want!r}, got {d.clamped_by!r}")
    fails += _denial_failures(d, expect.get("denied", {}))
    missing = [r for r in _list(expect.get("rules", [])) if r not in d.matched_rules]
    if missing:
        fails.append(f"expected rule(s) {', '.join(missing)} among the matched rules")
    text = " | ".join(d.reasons)
    wanted = _list(expect.get("reasons", []))
    return fails + [f"no reason mentions {s!r}" for s in wanted if s not in text]


def _denial_failures(d: EscalationDecided, wanted: object) -> list[str]:
    """``denied`` is a list of scopes, or a mapping scope -> the rule that must deny it."""
    denials = {x.scope: x.rule for x in d.denied}
    pairs = ({str(k): v for k, v in wanted.items()} if isinstance(wanted, dict)
             else dict.fromkeys(_list(wanted)))
    fails = []
    for scope, rule in pairs.items():
        if scope in denials and (rule is None or denials[scope] == rule):
            continue
        got = f"denied by rule {denials[scope]}" if scope in denials else "not denied"
        fails.append(f"expected {scope} denied" + (f" by rule {rule}" if rule else "")
                     + f", got {got}")
    return fails


def _list(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _signal_case(policy: Policy, case: LineMap, at: At, now: datetime) -> tuple[list[str], str]:
    raw = _mapping(case, "signal", at)
    data: dict[str, object] = {"source": "policy-test", **raw, "signal_id": "policy-test",
                               "subject_agent_id": str(case["agent"]), "observed_at": now}
    signal = _model(RiskObserved, data, at, raw.line)
    assert isinstance(signal, RiskObserved)
    action = policy.on_risk(signal, policy.agent(str(case["agent"])), now)
    expect = _mapping(case, "expect", at)
    check_fields(expect, at, "expect", required=(), optional=_SIGNAL_EXPECT)
    fails = []
    if "revoke" in expect and bool(expect["revoke"]) != action.revoke:
        fails.append(f"expected revoke {bool(expect['revoke'])}, got {action.revoke}")
    if "rule" in expect and expect["rule"] != action.rule:
        fails.append(f"expected rule {expect['rule']}, got {action.rule}")
    if "quarantine" in expect and _seconds(expect, "quarantine", at) != action.quarantine_s:
        fails.append(f"expected quarantine {expect['quarantine']}, got {action.quarantine_s}s")
    decided = (f"{'revoke' if action.revoke else 'no revocation'} by rule {action.rule or '-'}"
               f"; quarantine {action.quarantine_s}s; {action.reason}")
    return fails, decided
