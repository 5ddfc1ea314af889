"""``python -m bench [--quick] [--rounds N] [--out DIR]``: run every benchmark, write the report.

Imports the bench's modules, rich. Exit status 0 when the run completed (missed targets are
reported, not failures); 1 when a benchmark could not run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from bench import report, suite
from broker.errors import BrokerError

METHOD = [
    "One machine, loopback only; Kafka 4.1.1 (KRaft, one JVM) and Redis 7 started by the bench "
    "in .stack/bench with their own ports, wiped before and after.",
    "The subject is the real worker (`python -m streams`, faust) fed through the agent SDK; the "
    "raw loop (bench/rawloop.py) uses the same Kafka client (aiokafka) and Redis client on "
    "mirror topics of the same shape on the same broker.",
    "Latency samples are sequential and unloaded: each waits until the previous request was "
    "completely handled (its decision record flagged published), then 3 ms.",
    "Grant visibility is observed through Redis keyspace notifications (no polling), view "
    "visibility through the GrantView's on_event callback.",
]


def main(argv: list[str]) -> int:
    """Parse arguments, run, write and print."""
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=suite.REPORTS)
    args = parser.parse_args(argv)
    sizes = suite.Sizes(rounds=args.rounds)
    if args.quick:
        sizes = suite.Sizes(rounds=args.rounds, latency_n=40, revocations=10, expiry_grants=200,
                            tput_k=300, grants=10_000, http_n=50, http_k=200,
                            cost_n=30, cost_k=300, cost_scale=100)
    console = Console(highlight=False)
    started, t0 = datetime.now(UTC), time.monotonic()
    sections: list[report.Section] = []
    facts: dict[str, object] = {}
    try:
        suite.run(sizes, lambda m: console.print(f"[dim]bench:[/] {m}"), sections, facts)
    except (BrokerError, RuntimeError) as exc:
        console.print(f"[bold red]bench failed:[/] {exc}")
        facts["failed"] = f"{type(exc).__name__}: {exc}"
        if not sections:
            return 1
    meta = {"started": started.isoformat(timespec="seconds"),
            "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.python_version()})",
            "rounds": sizes.rounds, "sizes": sizes.__dict__, "elapsed_s": time.monotonic() - t0,
            "command": "make bench" if not args.quick else "python -m bench --quick",
            "method": METHOD, **facts}
    if (why := report.missed_targets(sections)) is not None:
        sections.insert(0, why)  # right after the summary: what was missed, why, what next
    md, js = report.write(sections, meta, args.out)
    report.print_summary(sections, console)
    console.print(f"report: {md}  raw figures: {js}  ({meta['elapsed_s']:.0f} s)")
    return 1 if "failed" in facts else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
