# The resource-side check of bench 4, in Rego: is there an unexpired grant of the scope on the
# resource for the agent? data.grants[agent] = [{scopes, resources, expires_ms}].
package permbroker.check

import rego.v1

default allow := false

allow if {
	some g in data.grants[input.agent]
	input.scope in g.scopes
	covers(g.resources)
	g.expires_ms > input.now_ms
}

covers(resources) if count(resources) == 0

covers(resources) if input.resource in resources
