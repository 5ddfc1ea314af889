"""Wires the identity checks into the faust app. Imports faust, broker, streams.

``install(app, processor, settings, policy)`` opens the gate in front of the escalation and risk
handlers, adds the agents for the registry and grant-command topics and a timer that publishes
the broker's JWKS whenever it changes (a rotation, a retirement), with no restart.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from broker.adapters.crypto.keystore import OperatorDirectory
from broker.adapters.crypto.tokens import BrokerKeyring
from broker.adapters.kafka.registry_view import RegistryView
from broker.adapters.redis.identity import IdentityStore
from broker.config import Settings
from broker.errors import BrokerError
from broker.policy import Policy
from schemas import topics
from streams.identity.commands import Commands
from streams.identity.gate import IdentityGate
from streams.processor import Incoming, Processor

log = logging.getLogger("permbroker.identity")
JWKS_INTERVAL_S = 1.0


def _incoming(event: Any) -> Incoming:
    m = event.message
    headers = m.headers or []
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    return Incoming(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value, items)


def install(app: faust.App, processor: Processor, settings: Settings, policy: Policy) -> Commands:
    """Put the identity gate in front of the processor and add the command agents."""
    gate = IdentityGate(OperatorDirectory(settings.key_path("operators")),
                        IdentityStore.from_url(settings.redis_url), settings, processor.audit,
                        processor._count)
    gate.classes = {name: (c.baseline, c.ceiling) for name, c in policy.classes.items()}
    processor.identity = gate
    commands = Commands(processor, gate, None, settings)
    registry = app.topic(topics.REGISTRY.name, value_type=bytes, key_type=bytes)
    grant_commands = app.topic(topics.GRANT_COMMANDS.name, value_type=bytes, key_type=bytes)

    @app.task  # type: ignore[untyped-decorator]
    async def prepare_identity() -> None:
        await _prepare(commands, gate, settings)

    @app.agent(registry, name="registry")
    async def on_registry(stream: Any) -> None:
        async for event in stream.events():
            await commands.on_registry(_incoming(event))

    @app.agent(grant_commands, name="grant-commands")
    async def on_grant_command(stream: Any) -> None:
        async for event in stream.events():
            await commands.on_grant_command(_incoming(event))

    @app.timer(JWKS_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def jwks() -> None:
        if commands.ready.is_set():
            try:
                await commands.publish_jwks()
            except BrokerError as exc:
                log.warning("JWKS publication failed, will retry: %s", exc)

    return commands


async def _prepare(commands: Commands, gate: IdentityGate, settings: Settings) -> None:
    """Load the registry from Kafka and the broker keyring from its file; then open the gate."""
    while True:
        try:
            registry = await asyncio.to_thread(RegistryView, settings.kafka_bootstrap)
            if not await asyncio.to_thread(registry.wait_ready, 120.0):
                raise BrokerError("the agent registry did not load within 120s")
            break
        except BrokerError as exc:
            log.error("identity not ready: %s (retrying)", exc)
            await asyncio.sleep(1.0)
    try:
        commands.keyring = BrokerKeyring(settings.key_path("broker"))
    except BrokerError as exc:  # tokens are refused (fail closed) until a keyring exists
        log.error("no grant tokens: %s", exc)
    if not gate.operators.keys():
        log.error("no trusted operator keys in %s: operator commands will be refused; run "
                  "`permbroker keys init`", gate.operators.path)
    gate.start(registry)
    commands.ready.set()
    await commands.publish_jwks(force=True)
    log.info("identity ready: %d agent(s) in the registry", len(registry.records()))
