"""`permbroker audit tail`: recent and live audit records, filtered. L3 (Typer + Rich).

Imports broker.adapters.bus, broker.cli_output, schemas. Reads the sealed audit topic
(read_committed: only entries of committed sealer transactions).
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Annotated, Any

import typer
from confluent_kafka import KafkaException, TopicPartition
from rich.markup import escape

from broker.adapters.kafka.bus import consumer, partitions, to_record
from broker.cli.context import cli_settings
from broker.cli.output import JsonOpt, fail, out, time_option
from broker.errors import BrokerError
from schemas import topics
from schemas.events import AuditRecord


def _start(c: Any, last: int, since: datetime | None) -> list[TopicPartition]:
    name = topics.AUDIT.name
    if since is not None:
        wanted = [TopicPartition(name, p, int(since.timestamp() * 1000))
                  for p in partitions(c, name)]
        return [tp for tp in c.offsets_for_times(wanted, timeout=10) if tp.offset >= 0]
    out_: list[TopicPartition] = []
    for p in partitions(c, name):
        low, high = c.get_watermark_offsets(TopicPartition(name, p), timeout=10)
        out_.append(TopicPartition(name, p, max(low, high - last)))
    return out_


def _scopes(rec: AuditRecord) -> set[str]:
    found: set[str] = set()
    for key in ("request", "decision", "event"):
        part = rec.inputs.get(key)
        if isinstance(part, dict):
            for field in ("scopes", "granted_scopes"):
                value = part.get(field)
                if isinstance(value, list):
                    found.update(str(v) for v in value)
    return found


def _wanted(rec: AuditRecord, agent: str | None, kind: str | None, scope: str | None) -> bool:
    return ((agent is None or rec.agent_id == agent) and (kind is None or rec.kind == kind)
            and (scope is None or scope in _scopes(rec)))


def _show(rec: AuditRecord, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(rec.model_dump_json() + "\n")
        return
    where = f"p{rec.chain.partition}/{rec.chain.seq}" if rec.chain else ""
    out.print(
        f"{rec.occurred_at:%H:%M:%S.%f}"[:-3] + f"Z {rec.kind:<20} {rec.agent_id or '-':<18} "
        f"{rec.outcome:<8} {escape('; '.join(rec.reasons)[:90])} "
        f"[dim]{escape(', '.join(rec.rules))} {where}[/]",
        highlight=False,
    )


def tail(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep following.")] = False,
    agent: Annotated[str | None, typer.Option(help="Only this agent.")] = None,
    kind: Annotated[str | None, typer.Option(
        help="Only this kind (escalation.decided, risk.observed, grant.revoked, ...).")] = None,
    scope: Annotated[str | None, typer.Option(help="Only records about this scope.")] = None,
    since: Annotated[str | None, typer.Option(
        help="From this time (ISO 8601, or '10m ago') instead of the last records.")] = None,
    last: Annotated[int, typer.Option(help="How many recent entries per partition.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Print recent audit records (and follow new ones with -f)."""
    settings = cli_settings()
    c = consumer(settings.kafka_bootstrap)
    try:
        c.assign(_start(c, last, time_option(since)))
        idle_since = time.monotonic()
        while follow or time.monotonic() - idle_since < 1.5:
            msg = c.poll(0.2)
            if msg is None or msg.error():
                continue
            idle_since = time.monotonic()
            rec = to_record(msg).event
            if isinstance(rec, AuditRecord) and _wanted(rec, agent, kind, scope):
                _show(rec, as_json)
    except (BrokerError, KafkaException) as exc:
        raise fail(str(exc), "is Kafka up? permbroker stack status") from exc
    except KeyboardInterrupt:
        pass
    finally:
        c.close()
