"""Benchmark 11: ``/v1/check`` over HTTP next to a trivial FastAPI endpoint in the same process.

Imports broker, schemas and the bench's modules. The server (``python -m bench.httpapi``) is a
child process; this side is the load generator, with one keep-alive ``http.client`` connection
per client thread. Every request carries its own assertion, minted before the timed batch (the
client's signing is not the subject), so the API verifies a fresh signature on every call.
Latency is sequential and unloaded (one connection); throughput is ``CLIENTS`` connections
sending as fast as the server answers. Each round measures both endpoints, in turn.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.env import ROOT
from bench.stats import Arm
from broker.adapters.crypto.assertions import mint
from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.service_key import register_service
from broker.config import Settings
from broker.errors import BrokerError

CLIENTS = 8
SERVICE = "bench-http"
PATH = "/v1/check"
HTTP_ARMS = {
    "api_lat": ("permbroker API: POST /v1/check", "ms"),
    "triv_lat": ("trivial FastAPI endpoint, same process", "ms"),
    "api_tput": (f"permbroker API: /v1/check, {CLIENTS} keep-alive clients", "/s"),
    "triv_tput": (f"trivial FastAPI endpoint, {CLIENTS} keep-alive clients", "/s"),
}


@contextmanager
def servers(settings: Settings) -> Iterator[tuple[int, int, Callable[[], str]]]:
    """The API and the trivial app on their ports, both answering; yields (api port, trivial
    port, a function minting one assertion of the bench's service for ``POST /v1/check``)."""
    key = SigningKey.generate()
    register_service(settings, SERVICE, key.jwk)
    api_port, trivial_port = settings.redis_port + 200, settings.redis_port + 201
    log_path = settings.stack_dir / "httpapi.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bench.httpapi", str(api_port),
                                 str(trivial_port)], stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        _wait_ready(proc, api_port, trivial_port, log_path)
        yield api_port, trivial_port, lambda: mint(key, f"service:{SERVICE}", "POST", PATH)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], api_port: int, trivial_port: int,
                log_path: Any) -> None:
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise BrokerError(f"the bench's HTTP server exited; see {log_path}")
        try:
            if _status(api_port, "GET", "/readyz") == 200 and \
                    _status(trivial_port, "GET", "/openapi.json") == 404:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BrokerError(f"the bench's API was not ready in 120 s; see {log_path}")
        time.sleep(0.2)


def _status(port: int, method: str, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        return conn.getresponse().status
    finally:
        conn.close()


class Client:
    """One keep-alive connection posting check bodies."""

    def __init__(self, port: int, body: bytes) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.body = body

    def post(self, token: str) -> dict[str, Any]:
        """One check; the decoded answer (raises on anything but 200)."""
        self.conn.request("POST", PATH, self.body, {
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise BrokerError(f"{PATH} answered {resp.status}: {data[:300]!r}")
        answer: dict[str, Any] = json.loads(data)
        return answer

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def _latency(client: Client, tokens: list[str]) -> list[float]:
    clock, out = time.perf_counter_ns, []
    for token in tokens:
        t0 = clock()
        client.post(token)
        out.append((clock() - t0) / 1e6)
    return out


def _throughput(port: int, body: bytes, tokens: list[str]) -> float:
    """Requests per second of ``CLIENTS`` threads sharing ``tokens``, start to last answer."""
    share = [tokens[i::CLIENTS] for i in range(CLIENTS)]
    clients = [Client(port, body) for _ in range(CLIENTS)]
    for c in clients:  # connect before the clock starts
        c.conn.connect()
    start, errors = threading.Barrier(CLIENTS + 1), []

    def run(c: Client, mine: list[str]) -> None:
        start.wait()
        try:
            for t in mine:
                c.post(t)
        except (BrokerError, OSError, http.client.HTTPException) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c, mine)) for c, mine in zip(clients, share,
                                                                                 strict=True)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for c in clients:
        c.close()
    if errors:
        raise BrokerError(f"a throughput client failed: {errors[0]}")
    return len(tokens) / elapsed


def http_rounds(settings: Settings, agent: str, scope: str, resource: str, rounds: int,
                n: int, k: int, say: Any) -> dict[str, Arm]:
    """Bench 11: each round, latency (``n`` sequential calls) then throughput (``k`` calls) of
    both endpoints, the trivial one first; every call checks ``agent``'s live grant."""
    arms = {key: Arm(name, unit) for key, (name, unit) in HTTP_ARMS.items()}
    body = json.dumps({"agent_id": agent, "scope": scope, "resource": resource}).encode()
    with servers(settings) as (api_port, trivial_port, assertion):
        probe = Client(api_port, body)
        answer = probe.post(assertion())
        if not answer.get("allowed"):
            raise RuntimeError(f"the API does not allow {agent}'s live grant: {answer}")
        warm = [assertion() for _ in range(200)]
        _latency(Client(trivial_port, body), warm)
        _latency(probe, warm)
        for r in range(rounds):
            for port, lat in ((trivial_port, "triv_lat"), (api_port, "api_lat")):
                client = Client(port, body)
                arms[lat].add_round(_latency(client, [assertion() for _ in range(n)]))
                client.close()
            for port, tput in ((trivial_port, "triv_tput"), (api_port, "api_tput")):
                arms[tput].add_round([_throughput(port, body, [assertion() for _ in range(k)])])
            say(f"http round {r + 1}/{rounds}: /v1/check p99 "
                f"{arms['api_lat'].round_stat(r, 99):.2f} ms (trivial "
                f"{arms['triv_lat'].round_stat(r, 99):.2f}), "
                f"{arms['api_tput'].rounds[r][0]:.0f}/s (trivial "
                f"{arms['triv_tput'].rounds[r][0]:.0f}/s)")
        probe.close()
    return arms
