"""An agent's identity in its process: signing, key rotation. Imports adapters, schemas.

``AgentIdentity`` holds the agent's keys (loaded from its key file, never sent anywhere: only the
public half is announced) and signs each outgoing message. ``rotate`` replaces the key without
human action: a new key pair is generated and saved as *pending*, announced in a ``rotate_key``
command signed by the current key, and used only once the broker accepted it; the previous key
then stays valid for the overlap window. ``Rotator`` does that on a schedule.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.keystore import AgentKeys, AgentKeyStore
from broker.adapters.crypto.signing import sign_message
from broker.adapters.kafka.codec import Encoded
from broker.errors import BrokerError, CommandRefused
from schemas.events import AgentCommand, CommandAnswered

log = logging.getLogger("permbroker.sdk")


class AgentIdentity:
    """The keys one agent signs with, from its key store; thread-safe."""

    def __init__(self, agent_id: str, store: AgentKeyStore) -> None:
        self.agent_id = agent_id
        self.store = store
        self._keys = store.load(agent_id)
        self._lock = threading.Lock()

    @property
    def kid(self) -> str:
        """The key id the agent signs with now."""
        return self._keys.current.kid

    def sign(self, message: Encoded) -> Encoded:
        """The message with this agent's ``ce_signature``."""
        return sign_message(message, self._keys.current, self.agent_id)

    def rotation_command(self, overlap_s: int | None) -> AgentCommand:
        """Generate (or reuse, after a crash) the pending key; the command announcing it."""
        with self._lock:
            keys = self.store.load(self.agent_id)
            if keys.pending is None:
                keys = dataclasses.replace(keys, pending=SigningKey.generate(keys.current.alg))
                self.store.save(keys)  # on disk before it is announced: a crash loses nothing
            self._keys = keys
            pending = keys.pending
        assert pending is not None
        return AgentCommand(command_id=f"rotate-{uuid.uuid4()}", action="rotate_key",
                            agent_id=self.agent_id, key=pending.jwk, overlap_s=overlap_s,
                            reason="scheduled key rotation", issued_at=datetime.now(UTC))

    def settle(self, answer: CommandAnswered) -> str:
        """Switch to the pending key once accepted (or drop it if refused); the kid in use."""
        with self._lock:
            keys = self.store.load(self.agent_id)
            pending = keys.pending
            accepted = answer.outcome == "done" or "already registered" in answer.reason
            if pending is not None and accepted:
                keys = AgentKeys(self.agent_id, pending, keys.current, datetime.now(UTC))
            else:
                keys = dataclasses.replace(keys, pending=None)
            self.store.save(keys)
            self._keys = keys
        if not accepted:
            raise CommandRefused(f"key rotation refused: {answer.reason}", rule=answer.rule)
        return keys.current.kid


def keyed_signer(store: AgentKeyStore) -> Callable[[Encoded], Encoded]:
    """Sign each message as the agent it is keyed by, when ``store`` holds that agent's key.

    For processes that speak for many agents at once (simulators, load generators, test
    harnesses); a message keyed by anything else is left unsigned.
    """

    def sign(message: Encoded) -> Encoded:
        agent = message.key.decode(errors="replace") if message.key is not None else ""
        try:
            known = bool(agent) and store.exists(agent)
        except BrokerError:  # not an agent id: nothing to sign with
            known = False
        return sign_message(message, store.load(agent).current, agent) if known else message

    return sign


class Rotator:
    """Rotates an agent's key every ``every_s`` seconds in a background thread."""

    def __init__(self, rotate: Callable[[], str], every_s: float) -> None:
        self._rotate = rotate
        self._every = every_s
        self._stop = threading.Event()
        self.rotations = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="permbroker-rotate", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                kid = self._rotate()
                self.rotations += 1
                log.info("rotated to key %s", kid)
            except BrokerError as exc:  # the next cycle tries again; the old key still works
                self.failures += 1
                log.warning("key rotation failed (will retry): %s", exc)

    def stop(self) -> None:
        """Stop rotating."""
        self._stop.set()
        self._thread.join(timeout=5)
