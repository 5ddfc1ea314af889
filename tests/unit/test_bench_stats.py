"""The bench's arithmetic: percentiles, per-round ratios, targets and the report's verdicts."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

from bench import sections
from bench.measures.cost import Point
from bench.measures.http import HTTP_ARMS
from bench.measures.latency import after_applied
from bench.observe import ViewEvents
from bench.report import Section, markdown, write
from bench.stats import Arm, Line, Target, median_ratio, percentile, ratio_lines
from broker.adapters.kafka.edge import Record
from schemas.events import AgentRevoked, WireModel


def _revoked(agent: str) -> AgentRevoked:
    now = datetime.now(UTC)
    return AgentRevoked(agent_id=agent, revoked_at=now, reason="bench", rule="r",
                        cause_event_id="e-1", markers_until=now)


def _record(partition: int, offset: int, event: WireModel | None) -> Record:
    return Record("permbroker.grants", partition, offset, 0, event, None, None)


def test_percentile_interpolates_and_is_nan_when_empty() -> None:
    """p50 of 1..4 is 2.5, p0/p100 are the ends, and no samples give NaN."""
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([4, 1, 3, 2], 0) == 1
    assert percentile([4, 1, 3, 2], 100) == 4
    assert math.isnan(percentile([], 50))


def test_median_ratio_divides_round_by_round_not_pooled() -> None:
    """Each round's p50 is divided by the same round's reference p50, then the median is taken."""
    subject, reference = Arm("s", "ms"), Arm("r", "ms")
    for s, r in ((10, 5), (30, 10), (8, 1)):  # per-round ratios 2, 3, 8
        subject.add_round([s] * 3)
        reference.add_round([r] * 3)
    value, rounds = median_ratio(subject, reference, 50)
    assert rounds == [2.0, 3.0, 8.0]
    assert value == 3.0  # pooled medians would give 10 / 5 = 2


def test_ratio_lines_scale_the_reference_and_judge_targets() -> None:
    """den_scale doubles the reference (view vs 2x RTT); a target says met or MISSED."""
    view, rtt = Arm("view", "ms"), Arm("rtt", "ms")
    view.add_round([5.0])
    rtt.add_round([2.0])
    p50, p99 = ratio_lines("2", view, rtt, label="view / 2x RTT", den_scale=2.0,
                           p50_target=Target("<= 1.3x", 1.3), p99_target=Target("<= 1x", 1.0))
    assert p50.value == 1.25 and p50.verdict == "met"
    assert p99.verdict == "MISSED"


def test_targets_at_least_and_unmeasured() -> None:
    """'at least' targets compare the other way; an unmeasured figure is n/a, never met."""
    assert Target(">= 0.5x", 0.5, at_least=True).met(0.6) is True
    assert Target(">= 0.5x", 0.5, at_least=True).met(0.4) is False
    assert Line("6", "x", math.nan, "x", target=Target("<= 1", 1.0)).verdict == "n/a"


def test_report_lists_missed_targets_in_the_summary() -> None:
    """A missed target appears, marked, in the summary of the Markdown report."""
    sec = Section("7", "7. Memory", lines=[
        Line("7", "Redis bytes per active grant", 2500.0, "B", target=Target("<= 200 B", 200))])
    meta = {"started": "t", "machine": "m", "rounds": 5, "elapsed_s": 1.0, "command": "c",
            "method": ["m"]}
    text = markdown([sec], meta)
    summary = text.split("## Summary")[1].split("## 7.")[0]
    assert "Redis bytes per active grant" in summary and "**MISSED**" in summary


def test_false_allows_count_every_check_after_the_view_applied_the_revocation() -> None:
    """Checks that began once the view's offset reached the revocation's count, before the
    first denial too; checks from before it do not (they may rightly allow)."""
    checks = [(False, True), (False, True), (True, True), (True, False), (True, False)]
    assert after_applied(checks) == (3, 1)  # the allow preceded the first denial
    assert after_applied([(False, True), (True, False), (True, False)]) == (2, 0)
    assert after_applied([(False, True), (False, False)]) == (0, 0)


def test_a_revocation_is_applied_once_the_views_offset_reaches_it() -> None:
    """The view's applied offset on the revocation's partition, not a clock, decides."""
    seen = ViewEvents()
    assert not seen.applied_through("a")
    seen.on_event(_record(0, 7, _revoked("a")), 0.0)
    assert seen.applied_through("a")
    seen.revocations["b"] = (1, 12)
    seen.on_event(_record(1, 11, None), 0.0)
    assert not seen.applied_through("b")
    seen.on_event(_record(1, 12, None), 0.0)
    assert seen.applied_through("b")
    seen.on_event(_record(0, 3, None), 0.0)  # another partition's offset never counts for b
    assert seen.applied_through("b")


def test_cpu_per_request_is_metered_per_arm_and_process() -> None:
    """An arm's CPU is what each process used during its rounds, over the requests made."""
    import os

    from bench.measures.latency import Rig

    rig = Rig(settings=None, watch=None, floor=None, view=None, seen=ViewEvents())  # type: ignore[arg-type]
    rig.pids = {"this process": os.getpid()}

    def burn() -> int:
        return sum(i * i for i in range(1_000_000))

    assert rig.metered("busy", 10, burn) == burn()
    rig.metered("busy", 10, burn)
    rig.metered("idle", 5, lambda: None)
    cpu = rig.cpu_ms_per_request()
    assert set(cpu) == {"busy", "idle"} and set(cpu["busy"]) == {"this process"}
    assert cpu["busy"]["this process"] > 0  # 20 requests shared the CPU burn() took
    assert rig.cpu_n == {"busy": 20, "idle": 5}


def test_view_memory_is_split_by_the_module_that_allocated_it() -> None:
    """Bytes per grant by allocating module, the largest first, the rest summed."""
    import tracemalloc

    from bench.measures.memory import by_component

    tracemalloc.start()
    try:
        kept = [bytearray(1000) for _ in range(100)]
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    split = by_component(snapshot, 100, top=3)
    assert split["tests/unit/test_bench_stats.py"] >= 1000  # each "grant" held 1,000 bytes here
    assert "(everything else)" in split and len(split) <= 4
    assert kept


def test_the_profile_sums_self_and_total_samples_per_function() -> None:
    """Collapsed stacks summed per function (line numbers dropped): self and total shares."""
    from bench.profile import top_frames

    top_of = "<module> (streams/__main__.py:5);run (faust/app.py:10);"
    collapsed = "\n".join([
        top_of + "decide (broker/grants/decide.py:42) 6",
        top_of + "decide (broker/grants/decide.py:50) 2",
        top_of + "verify (/x/site-packages/jose/jws.py:9) 2",
        "not a stack line",
    ])
    top = top_frames(collapsed, n=2)
    assert top == [
        {"function": "decide (broker/grants/decide.py)", "self %": 80.0, "total %": 80.0,
         "self samples": 8},
        {"function": "verify (jose/jws.py)", "self %": 20.0, "total %": 20.0, "self samples": 2},
    ]
    assert top_frames("") == []


def test_a_sections_tables_are_rendered_as_markdown_tables() -> None:
    """A table of rows (the worker profile) appears under its title, one row per line."""
    sec = Section("6", "6. Throughput", tables={"Top functions": [
        {"function": "decide (broker/grants/decide.py)", "self %": 80.0},
        {"function": "verify (jose/jws.py)", "self %": 20.0}]})
    meta = {"started": "t", "machine": "m", "rounds": 5, "elapsed_s": 1.0, "command": "c",
            "method": ["m"]}
    text = markdown([sec], meta)
    assert ("Top functions:\n\n| function | self % |\n|---|---|\n"
            "| decide (broker/grants/decide.py) | 80.0 |\n| verify (jose/jws.py) | 20.0 |") in text


def test_the_cost_curve_is_a_table_of_its_points_and_a_chart_written_next_to_the_report(
        tmp_path: Path) -> None:
    """Each point is one row (the worker / raw loop ratio computed from its two rates); the
    chart's PNG is written beside bench.md and linked from its section."""
    points = [Point(0, 1_584, 1_000, 1, 5.0, 12.5, 150.0, 1_500.0, 5.3),
              Point(0, 1_584, 1_000, 2, 5.5, 14.0, 240.0, 1_600.0, 5.9)]
    sec = sections.cost(points, b"\x89PNG fake")
    rows = sec.tables["One row per point, in the order measured (levels are cumulative)"]
    assert [r["workers"] for r in rows] == [1, 2]
    assert rows[0]["agents in the registry"] == "1,584"
    assert rows[0]["worker / raw loop"] == "0.10x" and rows[1]["worker / raw loop"] == "0.15x"
    meta = {"started": "t", "machine": "m", "rounds": 5, "elapsed_s": 1.0, "command": "c",
            "method": ["m"]}
    md, _js = write([sec], meta, tmp_path)
    assert (tmp_path / "bench-cost.png").read_bytes() == b"\x89PNG fake"
    assert "![12. Cost curve: registered agents, active grants, workers](bench-cost.png)" \
        in md.read_text()


def test_the_http_check_is_judged_on_per_round_throughput_ratios_and_the_p99_ratio() -> None:
    """Throughput: median of each round's API rate over the trivial endpoint's (>= 0.5x);
    latency: the usual median of per-round p99 ratios (<= 3x)."""
    arms = {key: Arm(name, unit) for key, (name, unit) in HTTP_ARMS.items()}
    for api, triv in ((400.0, 1000.0), (700.0, 1000.0), (900.0, 1000.0)):
        arms["api_tput"].add_round([api])
        arms["triv_tput"].add_round([triv])
        arms["api_lat"].add_round([2.0] * 95 + [40.0] * 5)
        arms["triv_lat"].add_round([1.0] * 100)
    lines = {ln.what: ln for ln in sections.http(arms).lines}
    tput = lines["/v1/check / trivial throughput"]
    assert tput.per_round == [0.4, 0.7, 0.9] and tput.value == 0.7 and tput.verdict == "met"
    p99 = lines["/v1/check / trivial p99 ratio"]
    assert p99.value > 3 and p99.verdict == "MISSED"


def test_the_worker_s_stage_histogram_is_read_from_its_exposition_per_topic_and_stage() -> None:
    """The seconds each stage gained, read back from the worker's own metrics format."""
    from prometheus_client import generate_latest

    from bench.measures.latency import stage_sums
    from streams.telemetry.figures import Figures

    figures = Figures()
    figures.stages.labels("permbroker.risk", "queued").observe(0.25)
    figures.stages.labels("permbroker.risk", "queued").observe(0.5)
    figures.stages.labels("permbroker.escalations", "audited").observe(0.125)
    got = stage_sums(generate_latest(figures.registry).decode())
    assert got == {("permbroker.risk", "queued"): 0.75,
                   ("permbroker.escalations", "audited"): 0.125}


def test_stage_rows_follow_the_path_and_the_cause_names_the_largest_stages_before_the_figure(
) -> None:
    """Mean ms per request in the path's order; the cause sums only the stages the figure
    waits for and names the largest of them."""
    from bench.measures.latency import STAGE_PATHS, Rig
    from bench.sections import _latency_cause

    rig = Rig(settings=None, watch=None, floor=None, view=None, seen=ViewEvents())  # type: ignore[arg-type]
    topic = STAGE_PATHS["escalation (worker)"][0]
    rig.cpu_n["escalation (worker)"] = 10
    rig.stage_s["escalation (worker)"] = {
        (topic, "published"): 0.05, (topic, "queued"): 0.02, (topic, "audited"): 0.01,
        (topic, "committed"): 0.005, ("permbroker.risk", "queued"): 9.0}
    rows = rig.stage_rows("escalation (worker)")
    assert [r["stage"] for r in rows] == ["queued", "audited", "committed", "published"]
    assert [r["mean ms per request"] for r in rows] == [2.0, 1.0, 0.5, 5.0]
    assert [r["share"] for r in rows] == ["24 %", "12 %", "6 %", "59 %"]
    cause = _latency_cause(rows, "committed", "the grant is in Redis", "the raw loop")
    assert "took 3.50 ms" in cause and "queued 2.00 ms, audited 1.00 ms, committed 0.50 ms" \
        in cause and "published" not in cause
    assert "not read" in _latency_cause([], "committed", "x", "y")


def test_missed_targets_are_listed_with_their_section_s_cause_and_none_when_all_met() -> None:
    """One note per section with a missed target: its figures, then the measured cause and
    next step the section wrote (or that none was measured)."""
    from bench.report import missed_targets

    missed = Section("7", "7. Memory", lines=[
        Line("7", "Redis bytes per active grant", 2500.0, "B", target=Target("<= 200 B", 200)),
        Line("7", "view bytes", 400.0, "B", target=Target("<= 500 B", 500))],
        missed="Measured cause: grant 760 B. Next step: msgpack.")
    bare = Section("6", "6. Throughput", lines=[
        Line("6", "one worker / raw loop", 0.1, "x", target=Target(">= 0.5x", 0.5, True))])
    met = Section("4", "4. Checks", lines=[
        Line("4", "view / dict", 2.0, "x", target=Target("<= 3x", 3.0))])
    out = missed_targets([missed, bare, met])
    assert out is not None and len(out.notes) == 2
    assert "Redis bytes per active grant 2,500 B (target <= 200 B)" in out.notes[0]
    assert "view bytes" not in out.notes[0] and "Next step: msgpack." in out.notes[0]
    assert "No cause was measured" in out.notes[1]
    assert missed_targets([met]) is None


def test_an_in_process_ratio_missed_names_both_sides_and_the_rounds_spread() -> None:
    """Section 4's view / dict target missed: the cause quotes both arms' p50 and how the
    rounds' ratios spread; met, the report lists nothing for it."""
    from bench.report import missed_targets

    def arm(name: str, per_round: list[float]) -> Arm:
        a = Arm(name, "us")
        a.rounds = [[v] * 3 for v in per_round]
        return a

    arms = {"view": arm("view", [3.2, 3.1]), "dict": arm("dict", [1.0, 1.0]),
            "opa_check": arm("opa", [60.0, 60.0]), "store": arm("store", [50.0, 50.0]),
            "get": arm("get", [40.0, 40.0])}
    sec = sections.checks(arms)
    assert "view took 3.15 us (p50) against 1 us for dict" in sec.missed
    assert "ranged 3.10x to 3.20x" in sec.missed
    out = missed_targets([sec])
    assert out is not None and "view / dict lookup p50 ratio 3.15x" in out.notes[0]
    arms["view"] = arm("view", [2.0, 2.0])
    assert missed_targets([sections.checks(arms)]) is None


def test_memory_states_the_cause_of_each_figure_missed_only() -> None:
    """Redis missed, the view met: only the Redis breakdown is the cause; both missed: both."""
    redis_side = {"bytes_per_grant": 1943.0, "breakdown": {"grant": 760.0, "life": 120.0}}
    view_ok = {"bytes_per_grant": 475.0, "bytes_per_grant_by_module": {"compact.py": 240.0}}
    sec = sections.memory(redis_side, view_ok, 2**20)
    assert "grant 760 B, life 120 B" in sec.missed and "in the view" not in sec.missed
    both = sections.memory(redis_side, {**view_ok, "bytes_per_grant": 900.0}, 2**20)
    assert "in Redis" in both.missed and "compact.py 240 B" in both.missed
