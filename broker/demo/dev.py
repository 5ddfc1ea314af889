"""``permbroker dev``: the local stack, a worker, the API and the example service, until stopped.

L3: imports broker (stack, adapters, sdk, policy, config) and schemas. Starts the secure local
stack (as ``permbroker stack up`` does), a worker on the dev bundle, the HTTP API and the
example payments service of ``examples/``, registers every agent of the bundle with a key of its
own, prints the next commands to try, and on Ctrl-C or SIGTERM stops everything it started
(children first, then Kafka and Redis), leaving no process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import httpx

from broker.adapters.crypto.keystore import AgentKeyStore, ensure_identity_files
from broker.adapters.kafka.jwks import JwksView
from broker.adapters.kafka.registry_view import read_registry
from broker.config import Settings, shipped_bundle
from broker.errors import BrokerError
from broker.policy import load_policy
from broker.sdk.operator.client import OperatorClient
from broker.stack import local as stack
from broker.stack.credentials import role_access, role_settings
from broker.stack.sealer import SealerProcess, sealing_off
from broker.stack.worker import WorkerProcess, worker_env
from schemas import topics

ROOT = Path(__file__).resolve().parents[2]
DEV_BUNDLE = shipped_bundle("dev")
EXAMPLES = ROOT / "examples"
# What to try next, printed once everything is up; the README's quick start shows the same
# lines and an integration test runs them from there, byte for byte.
NEXT_COMMANDS = (
    "source .venv/bin/activate",
    'eval "$(permbroker stack env --role agent)"',
    "permbroker request --agent fraud-detector-7 --scope payments:accounts.freeze "
    '--resource acct-1 --reason "fraud ring" --confidence 0.95 --risk 0.9',
    "python examples/freeze_account.py --agent fraud-detector-7 --account acct-1",
    'eval "$(permbroker stack env --role operator)"',
    "permbroker grants list",
)
Say = Callable[[str], None]


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: stop everything."""


def dev_settings(base: Settings) -> Settings:
    """``base`` with the dev bundle unless a policy path was configured."""
    if "policy_path" in base.model_fields_set:
        return base
    return base.model_copy(update={"policy_path": DEV_BUNDLE})


class Child:
    """One child process of the session (API, example service) with its log in the stack dir."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            # Its own session: Ctrl-C reaches the session only, which stops it in order.
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                start_new_session=True)

    def running(self) -> bool:
        """Whether it still runs."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def _signals_stop() -> Iterator[None]:
    """SIGINT and SIGTERM raise Stopped in the main thread for the duration."""
    def stop(signum: int, _frame: FrameType | None) -> None:
        raise Stopped(signal.Signals(signum).name)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _wait_http(child: Child, url: str, timeout: float, ok: Callable[[httpx.Response], bool]
               ) -> None:
    """Wait until ``url`` answers as ``ok`` wants; BrokerError if the child dies or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.running():
            raise BrokerError(f"{child.name} exited; see {child.log}")
        try:
            if ok(httpx.get(url, timeout=1.0)):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise BrokerError(f"{child.name} not ready within {timeout:.0f}s at {url}; see {child.log}")


def register_bundle_agents(settings: Settings, say: Say) -> None:
    """Every agent of the bundle, with its own key (generated once, kept in the key store);
    agents a previous run registered are kept as they are."""
    store = AgentKeyStore.from_settings(settings)
    policy = load_policy(settings.policy_path)
    operator = role_access(settings, topics.OPERATOR)
    with JwksView.from_settings(settings, operator) as jwks:
        registry = read_registry(operator, jwks.trust)
    with OperatorClient(settings, operator) as op:
        for profile in policy.agents():
            agent = profile.agent_id
            if registry.get(agent) is not None:
                say(f"{agent} is registered already")
                continue
            keys = store.load(agent) if store.exists(agent) else store.generate(agent)
            op.register(profile, keys.current.jwk, reason="permbroker dev")
            say(f"registered {agent} with its own key {keys.current.kid[:12]}…")


def _env(settings: Settings, role: str, **extra: str) -> dict[str, str]:
    return {**worker_env(settings, role_access(settings, role)), **extra}


class DevSession:
    """The processes of one ``permbroker dev`` run, stopped in reverse order."""

    def __init__(self, settings: Settings, say: Say, example_port: int) -> None:
        self.settings, self.say, self.example_port = settings, say, example_port
        self.worker: WorkerProcess | None = None
        self.sealer: SealerProcess | None = None
        self.children: list[Child] = []

    def start(self) -> None:
        """Stack, keys, worker, agents, API, example service; each waited for."""
        s, say = self.settings, self.say
        stack.ensure_tools(say)
        status = stack.up(s, progress=say)
        s = self.settings = stack.as_admin(s)
        say(f"Kafka at {status.bootstrap}, Redis at {status.redis_url}")
        for path in ensure_identity_files(s):  # private keys: 0600, never printed
            say(f"created {path}")
        self.worker = WorkerProcess(sealing_off(s), role_access(s, topics.WORKER))
        self.worker.start()
        say(f"worker pid {self.worker.pid} starting (policy {s.policy_path}) ...")
        self.worker.wait_ready(120)
        say("worker ready")
        self.sealer = SealerProcess(s, role_access(s, topics.WORKER))
        self.sealer.start()
        self.sealer.wait_ready(120)
        say(f"audit sealer pid {self.sealer.pid} ready (its lag on 127.0.0.1:"
            f"{s.audit_sealer_metrics_port}/metrics)")
        register_bundle_agents(s, say)
        self._start_api()
        self._start_example()

    def _start_api(self) -> None:
        s = self.settings
        api = role_settings(s, topics.API)
        env = _env(s, topics.API, PERMBROKER_API_HOST=api.api_host,
                   PERMBROKER_API_PORT=str(api.api_port),
                   PERMBROKER_ENFORCEMENT_POINT="permbroker-api.dev")
        # The operator console is served by this process (/console): nothing more to start.
        child = self._spawn("api", [sys.executable, "-m", "broker", "api"], env)
        base = f"http://{api.api_host}:{api.api_port}"
        _wait_http(child, f"{base}/healthz", 60, lambda r: r.status_code == 200)
        self.say(f"API at {base} (OpenAPI at {base}/openapi.json); operator console at "
                 f"{base}/console (sign in with: permbroker keys assertion POST "
                 "/console/login --ttl 120)")

    def _start_example(self) -> None:
        if not (EXAMPLES / "payments_service.py").is_file():
            self.say(f"no example service in {EXAMPLES}: skipped")
            return
        argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES),
                "payments_service:app", "--host", "127.0.0.1", "--port", str(self.example_port)]
        child = self._spawn("payments-example", argv, _env(self.settings, topics.SERVICE))
        base = f"http://127.0.0.1:{self.example_port}"
        _wait_http(child, f"{base}/healthz", 60,
                   lambda r: r.status_code == 200 and r.json().get("fresh") is True)
        self.say(f"example payments service at {base} (examples/payments_service.py)")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        child = Child(name, argv, env, self.settings.stack_dir / f"dev-{name}.log")
        self.children.append(child)
        self.say(f"{name} pid {child.proc.pid} starting ...")
        return child

    def watch(self) -> None:
        """Until a signal: BrokerError as soon as one of the processes exits."""
        while True:
            for child in self.children:
                if not child.running():
                    raise BrokerError(f"{child.name} exited; see {child.log}")
            for proc in (self.worker, self.sealer):
                if proc is not None and proc.proc is not None and proc.proc.poll() is not None:
                    raise BrokerError(f"the {proc.log_path.stem} exited; see {proc.log_path}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Children in reverse order, the worker, then Kafka and Redis (their data is kept)."""
        for child in reversed(self.children):
            child.stop()
            self.say(f"stopped {child.name}")
        if self.sealer is not None:
            self.sealer.stop()
            self.say("stopped the audit sealer")
        if self.worker is not None:
            self.worker.stop()
            self.say("stopped the worker")
        stopped = stack.down(self.settings)
        self.say(f"stopped {', '.join(stopped) or 'nothing else'}")


def run_dev(settings: Settings, say: Say, show: Callable[[tuple[str, ...]], None], *,
            example_port: int) -> int:
    """Start everything, show the next commands, run until stopped; the exit status."""
    session = DevSession(dev_settings(settings), say, example_port)
    code = 0
    with _signals_stop():
        try:
            session.start()
            show(NEXT_COMMANDS)
            session.watch()
        except Stopped as sig:
            say(f"{sig}: stopping everything")
        except BrokerError as exc:
            say(f"failed: {exc}")
            code = 1
        finally:
            # A second Ctrl-C must not cut the clean-up short.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            session.stop()
    return code


def example_port() -> int:
    """The example service's port: PERMBROKER_EXAMPLE_PORT, else 8081."""
    return int(os.environ.get("PERMBROKER_EXAMPLE_PORT", "8081"))
