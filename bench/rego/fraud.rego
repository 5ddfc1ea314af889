# The example fraud policy (policies/fraud/policy.yaml) hand-translated to Rego for bench 5:
# ceilings, the deny rule, both escalation rules with their resource limits, default deny and
# the duration clamp. data.classes / data.agents come from the same bundle.
package permbroker.fraud

import rego.v1

agent := data.agents[input.request.agent_id]

cls := data.classes[agent.agent_class]

scopes := {s | some s in input.request.scopes}

n_resources := count({r | some r in input.request.resources})

in_ceiling(s) if {
	some pattern in cls.ceiling
	glob.match(pattern, [":", "."], s)
}

deny_rule(s) := "no-pii-for-risky-agent" if {
	glob.match("crm:**", [], s)
	input.risk.agent >= 0.7
}

granting(s) := "fraud-freeze-on-pattern" if {
	agent.agent_class == "fraud-detection"
	s in {"payments:accounts.freeze", "crm:customer.pii.read"}
	input.request.confidence >= agent.confidence_threshold
	input.request.risk_score >= 0.8
	n_resources >= 1
	n_resources <= 10
}

granting(s) := "report-ledger-export" if {
	agent.agent_class == "reporting"
	s == "reports:ledger.export"
	input.request.confidence >= agent.confidence_threshold
}

granted[s] := rule if {
	some s in scopes
	in_ceiling(s)
	not deny_rule(s)
	rule := granting(s)
}

denied[s] := why(s) if {
	some s in scopes
	not granted[s]
}

why(s) := sprintf("ceiling:%s", [agent.agent_class]) if not in_ceiling(s)
else := rule if rule := deny_rule(s)
else := "default-deny"

max_duration := {"fraud-freeze-on-pattern": 20, "report-ledger-export": 8}

limit := min({900} | {max_duration[r] | some r in granted})

default duration_s := 0

duration_s := min({input.request.duration_s, limit}) if count(granted) > 0

decision := {
	"granted": granted,
	"denied": denied,
	"duration_s": duration_s,
	"clamped": input.request.duration_s > limit,
}
