"""docker-compose.yml is valid compose (the compose-spec JSON Schema) and runs as designed:
an unprivileged image with writable state, a one-shot key initialiser before the worker."""

from __future__ import annotations

import copy
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from broker.stack import redisusers

REPO = Path(__file__).resolve().parents[2]


def _schema() -> dict[str, Any]:
    """The compose-spec schema check-jsonschema vendors (read as a file, not imported)."""
    dist = importlib.metadata.distribution("check-jsonschema")
    found = [f for f in dist.files or () if str(f).endswith("vendor/compose-spec.json")]
    assert found, "check-jsonschema ships no compose-spec.json"
    loaded: dict[str, Any] = json.loads(Path(str(dist.locate_file(found[0]))).read_text("utf-8"))
    return loaded


def _problems(doc: object) -> list[str]:
    validator = jsonschema.Draft202012Validator(
        _schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)]


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text("utf-8"))
    return loaded


def test_the_compose_file_is_valid_against_the_compose_spec() -> None:
    """No schema errors; and the validator does catch a misspelt key (it can fail)."""
    doc = _compose()
    assert _problems(doc) == []
    broken = copy.deepcopy(doc)
    broken["services"]["worker"]["enviroment"] = broken["services"]["worker"].pop("environment")
    assert _problems(broken)


def test_the_worker_starts_after_the_keys_exist_in_a_volume_it_may_write() -> None:
    """init (one-shot) writes the keys to the data volume; the worker waits for it to succeed
    and mounts the same volume; nothing mounts a host key folder."""
    services = _compose()["services"]
    init, worker = services["init"], services["worker"]
    assert "keys init" in " ".join(init["command"]) and init["restart"] == "no"
    assert worker["depends_on"]["init"] == {"condition": "service_completed_successfully"}
    for service in (init, worker):
        assert "permbroker-data:/data" in service["volumes"]
    assert "permbroker-data" in _compose()["volumes"]
    assert not [v for s in services.values() for v in s.get("volumes", ()) if "keys" in v]


def test_the_image_runs_unprivileged_with_its_state_in_data() -> None:
    """A non-root USER owns /data, where the stack dir (keys) lives."""
    lines = (REPO / "Dockerfile").read_text("utf-8").splitlines()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users == ["permbroker"]
    assert any("chown -R permbroker:permbroker /data" in line for line in lines)
    assert any("PERMBROKER_STACK_DIR=/data/stack" in line for line in lines)


def test_redis_has_the_stacks_users_and_each_process_logs_in_as_its_role() -> None:
    """The compose Redis: the default user off, the same users and rules as the native stack's
    ACL file; the worker and the sealer reach it as ``worker``, with that user's password."""
    services = _compose()["services"]
    script = services["redis"]["command"][-1]
    users = {}
    for part in script.split("--user ")[1:]:
        words = part.replace('"', "").split()
        users[words[0]] = words[1:]
    assert users.pop("default") == ["off", "nopass", "nocommands"]
    for user, words in users.items():
        assert words[:2] == ["on", f">$$PB_KAFKA_{user.upper()}_PASSWORD"], user  # $$: compose
        assert " ".join(words[2:]) == redisusers.RULES[user], user
    assert set(users) == set(redisusers.RULES)
    for name in ("worker", "sealer"):
        url = services[name]["environment"]["PERMBROKER_REDIS_URL"]
        assert url == "redis://worker:${PB_KAFKA_WORKER_PASSWORD:?}@redis:6379/0", name
    assert "--user admin" in services["redis"]["healthcheck"]["test"][1]
