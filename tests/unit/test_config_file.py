"""Settings come from the environment, then permbroker.toml, then defaults: never the cwd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker.config import Settings
from broker.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PERMBROKER_* from the caller; XDG dirs of this test's own."""
    for name in list(os.environ):
        if name.startswith("PERMBROKER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_need_no_current_directory(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """State under the XDG data dir; the policy is the shipped fraud bundle, found from anywhere."""
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.stack_dir == tmp_path / "data" / "permbroker" / "stack"
    assert settings.policy_path == REPO / "policies" / "fraud"
    assert (settings.policy_path / "policy.yaml").is_file()


def test_the_xdg_config_file_is_read_and_its_relative_paths_are_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths in the file are relative to the file's folder, whatever the current directory."""
    _write(tmp_path / "config" / "permbroker" / "permbroker.toml",
           'policy_path = "bundles/mine"\nstack_dir = "/srv/pb"\nredis_port = 6390\n')
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.policy_path == tmp_path / "config" / "permbroker" / "bundles" / "mine"
    assert settings.stack_dir == Path("/srv/pb")
    assert settings.redis_port == 6390


def test_the_environment_wins_over_the_file(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """PERMBROKER_CONFIG names the file; a PERMBROKER_* variable overrides what it says."""
    path = _write(tmp_path / "elsewhere.toml", 'redis_port = 6390\napp_id = "from-file"\n')
    monkeypatch.setenv("PERMBROKER_CONFIG", str(path))
    monkeypatch.setenv("PERMBROKER_REDIS_PORT", "6391")
    settings = Settings()
    assert (settings.redis_port, settings.app_id) == (6391, "from-file")


def test_a_missing_named_file_and_an_unknown_key_are_errors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PERMBROKER_CONFIG that does not exist, and a typo in the file, are refused."""
    monkeypatch.setenv("PERMBROKER_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        Settings()
    monkeypatch.setenv("PERMBROKER_CONFIG", str(_write(tmp_path / "bad.toml", "redis_prot = 1\n")))
    with pytest.raises(ValueError, match="redis_prot"):
        Settings()


def test_results_are_identical_from_any_directory(tmp_path: Path) -> None:
    """The same settings, resolved, from the repository root and from an unrelated folder."""
    _write(tmp_path / "config" / "permbroker" / "permbroker.toml", 'policy_path = "b"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMBROKER_")}
    code = "from broker.config import Settings; print(Settings().model_dump_json())"
    seen = [json.loads(subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env,
                                      capture_output=True, text=True, check=True).stdout)
            for cwd in (REPO, tmp_path, Path("/"))]
    assert seen[0] == seen[1] == seen[2]
    assert seen[0]["policy_path"] == str(tmp_path / "config" / "permbroker" / "b")
