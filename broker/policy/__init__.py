"""Pure policy core: load a bundle, decide escalations and risk. Imports its submodules only.

    policy = load_policy("policies/fraud")
    evaluation = policy.evaluate(request, policy.agent(request.agent_id), RiskContext(), now)
"""

from __future__ import annotations

from broker.policy.evaluate import Policy
from broker.policy.loader import load_policy, load_policy_files
from broker.policy.model import Evaluation, RiskAction, RiskContext

__all__ = [
    "Evaluation", "Policy", "RiskAction", "RiskContext", "load_policy", "load_policy_files",
]
