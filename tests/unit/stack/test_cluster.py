"""The multi-broker cluster's server.properties and argv (pure: files in a tmp dir, no JVM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.stack import cluster as stack_cluster
from broker.stack import kafka as stack_kafka
from broker.stack import rediscluster


def _props(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


def test_each_node_is_a_voter_and_broker_with_rf_3_and_min_isr_2(tmp_path: Path) -> None:
    """Three nodes: distinct ports and dirs, one shared voter list, RF 3, min ISR 2, no unclean."""
    spec = stack_cluster.ClusterSpec(tmp_path, 47000, nodes=3)
    nodes = [_props(stack_cluster.write_node_properties(spec, n)) for n in (1, 2, 3)]
    assert [p["node.id"] for p in nodes] == ["1", "2", "3"]
    assert len({p["listeners"] for p in nodes}) == 3
    assert len({p["log.dirs"] for p in nodes}) == 3
    assert {p["controller.quorum.voters"] for p in nodes} == {
        "1@127.0.0.1:47001,2@127.0.0.1:47003,3@127.0.0.1:47005"}
    for p in nodes:
        assert p["process.roles"] == "broker,controller"
        assert p["default.replication.factor"] == "3"
        assert p["offsets.topic.replication.factor"] == "3"
        assert p["min.insync.replicas"] == "2"
        assert p["unclean.leader.election.enable"] == "false"
    assert spec.bootstrap == "127.0.0.1:47000,127.0.0.1:47002,127.0.0.1:47004"


def test_cluster_nodes_get_a_small_heap_and_the_single_broker_keeps_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """heap= replaces -Xms/-Xmx for cluster nodes; the default argv is the single broker's."""
    monkeypatch.setattr(stack_kafka, "tool", lambda name: f"/usr/bin/{name}")
    single = stack_kafka.server_argv(tmp_path, tmp_path / "p")
    small = stack_kafka.server_argv(tmp_path, tmp_path / "p", heap=stack_cluster.HEAP)
    assert [a for a in single if a.startswith("-Xm")] == ["-Xms256m", "-Xmx768m"]
    assert [a for a in small if a.startswith("-Xm")] == ["-Xms128m", "-Xmx256m"]
    assert [a for a in small if not a.startswith("-Xm")] == [
        a for a in single if not a.startswith("-Xm")]


def test_extra_jvm_options_come_after_the_stacks_own_so_they_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PERMBROKER_KAFKA_JVM_OPTIONS (shell-split) follows the stack's options, before the
    main class: HotSpot takes the last of two settings of one option."""
    monkeypatch.setattr(stack_kafka, "tool", lambda name: f"/usr/bin/{name}")
    argv = stack_kafka.server_argv(tmp_path, tmp_path / "p",
                                   extra="-XX:TieredStopAtLevel=1 -Xmx512m")
    main = argv.index("kafka.Kafka")
    assert argv.index("-XX:TieredStopAtLevel=1") < main
    assert argv.index("-Xmx512m") > argv.index("-Xmx768m")
    assert stack_kafka.server_argv(tmp_path, tmp_path / "p", extra="") == \
        stack_kafka.server_argv(tmp_path, tmp_path / "p")


def test_a_redis_cluster_bus_port_is_never_in_the_ephemeral_range() -> None:
    """Each node's bus port sits below Linux's ephemeral range (an outgoing connection could
    hold it) and apart from every client port of the same six-node cluster."""
    for base in (6479, 25160, 26500, 27900, 30000):
        clients = {base + n for n in range(rediscluster.NODES)}
        buses = {rediscluster.bus_port(p) for p in clients}
        assert all(0 < b < rediscluster.EPHEMERAL_LOW for b in buses), (base, buses)
        assert not buses & clients
