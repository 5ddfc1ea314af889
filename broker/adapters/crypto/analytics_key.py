"""The broker's analytics identity: the key its behaviour signals are signed with. Imports broker.

Behaviour signals go through the identity gate like any risk signal. They are signed by the
principal ``operator:permbroker-analytics``, whose private key lives next to the other key files
(``<keys>/analytics.json``, 0600) and whose public key is added to the trusted operators file,
so the gate admits its signals about any agent and audits them as signed by it.
"""

from __future__ import annotations

from pathlib import Path

from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.keystore import (
    add_operator,
    load_operator,
    load_operators,
    write_private,
)
from broker.config import Settings
from schemas.signing import OPERATOR_PREFIX

ANALYTICS_PRINCIPAL = OPERATOR_PREFIX + "permbroker-analytics"


def analytics_key_path(settings: Settings) -> Path:
    """Where the analytics key lives: beside the trusted operators file."""
    return settings.key_path("operators").parent / "analytics.json"


def ensure_analytics_key(settings: Settings) -> tuple[str, SigningKey]:
    """The analytics principal and key, created on first use and trusted by the workers."""
    path = analytics_key_path(settings)
    if not path.exists():
        key = SigningKey.generate()
        write_private(path, {"principal": ANALYTICS_PRINCIPAL, "private_key_pem": key.to_pem()})
    principal, key = load_operator(path)
    operators = settings.key_path("operators")
    if not operators.exists() or key.kid not in load_operators(operators):
        add_operator(operators, principal, key.jwk)
    return principal, key
