"""A trust file's keys: a key added is trusted at once, a key removed stops being trusted within
``KeyDirectory.RECHECK_S``, and a lookup of a held key does not touch the file system."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker.adapters.crypto import directory
from broker.adapters.crypto.directory import add_principal, read_public, write_public
from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.trust import SERVICES_FILE, ServiceDirectory

A, B = SigningKey.generate(), SigningKey.generate()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(directory.time, "monotonic", c)
    return c


def test_a_key_added_is_trusted_at_once_and_a_key_removed_within_the_recheck(
        tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "services.json"
    add_principal(path, "service:payments", A.jwk, SERVICES_FILE)
    keys = ServiceDirectory(path)
    assert keys.get(A.kid) == ("service:payments", A.jwk)

    add_principal(path, "service:crm", B.jwk, SERVICES_FILE)
    assert keys.get(B.kid) == ("service:crm", B.jwk)  # not held: the file is re-read

    kept = [k for k in read_public(path, SERVICES_FILE)["keys"] if k["kid"] != A.kid]
    write_public(path, {"keys": kept})
    stamp = path.stat().st_mtime_ns + 1_000_000
    os.utime(path, ns=(stamp, stamp))  # a changed stamp even on a coarse clock
    clock.now += keys.RECHECK_S / 2
    assert keys.get(A.kid) is not None  # still held: the bound, not yet due
    clock.now += keys.RECHECK_S
    assert keys.get(A.kid) is None
    assert keys.get(B.kid) == ("service:crm", B.jwk)


def test_a_held_key_is_found_without_a_file_system_call_until_the_recheck_is_due(
        tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "services.json"
    add_principal(path, "service:payments", A.jwk, SERVICES_FILE)
    keys = ServiceDirectory(path)
    stats: list[Path] = []
    real_stat = Path.stat

    def counted(self: Path, **kwargs: object) -> os.stat_result:
        stats.append(self)
        return real_stat(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "stat", counted)
    for _ in range(100):
        assert keys.held(A.kid) is not None
    assert stats == []
    clock.now += keys.RECHECK_S
    assert keys.held(A.kid) is not None
    assert stats == [path]
