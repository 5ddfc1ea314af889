"""The report: ``reports/bench.md`` (for people), ``reports/bench.json`` (every raw figure), and
a summary table on the terminal. Imports rich and the bench's stats.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.stats import Arm, Line


@dataclass
class Section:
    """One benchmark: its arms, its ratio lines and what a reader must know."""

    key: str
    title: str
    arms: list[Arm] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # title -> rows
    images: dict[str, bytes] = field(default_factory=dict)  # file name (next to bench.md) -> PNG
    # When a target of this section is missed: its measured cause and the next step, from
    # this run's figures (bench/sections.py writes it with the section).
    missed: str = ""


def missed_targets(sections: list[Section]) -> Section | None:
    """One note per section with a missed target: the figures missed, their measured cause and
    the next step (None when every target was met)."""
    out = Section("missed", "Missed targets: measured cause and next step")
    for s in sections:
        lines = [ln for ln in s.lines if ln.verdict == "MISSED"]
        if not lines:
            continue
        figures = "; ".join(f"{ln.what} {_fmt(ln.value, ln.unit)} (target "
                            f"{ln.target.text if ln.target else '-'})" for ln in lines)
        out.notes.append(f"**{s.title}**: {figures}. "
                         f"{s.missed or 'No cause was measured for this section in this run.'}")
    return out if out.notes else None


def _fmt(value: float, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "x":
        return f"{value:.2f}x"
    if abs(value) >= 1000:
        return f"{value:,.0f}{(' ' + unit) if unit else ''}"
    return f"{value:.3g}{(' ' + unit) if unit else ''}"


def _arm_table(arms: list[Arm]) -> list[str]:
    out = ["| arm | unit | n | p50 | p90 | p99 | max | per-round p50 |",
           "|---|---|---|---|---|---|---|---|"]
    for a in arms:
        if not any(a.rounds):
            out.append(f"| {a.name} | {a.unit} | 0 | - | - | - | - | {a.notes or 'not run'} |")
            continue
        s = a.summary()
        rounds = ", ".join(_fmt(v) for v in s["round_p50"])
        out.append(f"| {a.name} | {a.unit} | {s['count']} | {_fmt(s['p50'])} | {_fmt(s['p90'])} "
                   f"| {_fmt(s['p99'])} | {_fmt(s['max'])} | {rounds} |")
    return out


def _line_table(lines: list[Line]) -> list[str]:
    out = ["| figure | value | compared with | per round | target | verdict |",
           "|---|---|---|---|---|---|"]
    for ln in lines:
        rounds = ", ".join(_fmt(v, "x" if ln.unit == "x" else "") for v in ln.per_round)
        target = ln.target.text if ln.target else "-"
        verdict = {"MISSED": "**MISSED**", "met": "met"}.get(ln.verdict, ln.verdict or "-")
        out.append(f"| {ln.what} | {_fmt(ln.value, ln.unit)} | {ln.reference or '-'} | "
                   f"{rounds or '-'} | {target} | {verdict} |")
    return out


def markdown(sections: list[Section], meta: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    out = ["# permbroker benchmarks", "",
           f"Run {meta['started']} on {meta['machine']}; {meta['rounds']} interleaved rounds; "
           f"took {meta['elapsed_s']:.0f} s. Command: `{meta['command']}`.", "",
           *([f"**The run stopped early: {meta['failed']}** The sections below are those that "
              "completed.", ""] if meta.get("failed") else []),
           "Every ratio is the **median of per-round ratios** (subject / reference, measured in "
           "the same round, one after the other). Raw samples of every arm are in "
           "`reports/bench.json`.", "",
           "The worker runs the example fraud policy without its behaviour detectors (the "
           "benchmark's agent pools run far above any usual rate, so the detectors would "
           "quarantine them mid-run); see `bench/env.py` `write_policy`.", "", "## Summary", ""]
    out += _line_table([ln for s in sections for ln in s.lines if ln.target is not None])
    for s in sections:
        out += ["", f"## {s.title}", ""]
        out += [f"- {n}" for n in s.notes]
        if s.notes:
            out.append("")
        if s.lines:
            out += [*_line_table(s.lines), ""]
        if s.arms:
            out += _arm_table(s.arms)
        for k, v in s.extra.items():
            out.append(f"- {k}: {json.dumps(v) if isinstance(v, dict | list) else v}")
        for title, rows in s.tables.items():
            out += ["", f"{title}:", "", *_rows_table(rows)]
        for name in s.images:
            out += ["", f"![{s.title}]({name})"]
    out += ["", "## Method", ""] + [f"- {m}" for m in meta["method"]]
    return "\n".join(out) + "\n"


def _rows_table(rows: list[dict[str, Any]]) -> list[str]:
    """Rows of one shape as a markdown table (its columns in the first row's order)."""
    if not rows:
        return ["(none)"]
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return out + ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]


def to_json(sections: list[Section], meta: dict[str, Any]) -> dict[str, Any]:
    """Every figure: meta, lines and each arm with all of its samples."""
    return {"meta": meta, "benchmarks": [
        {"key": s.key, "title": s.title, "notes": s.notes, "extra": s.extra, "tables": s.tables,
         "lines": [ln.to_dict() for ln in s.lines], "arms": [a.summary() for a in s.arms]}
        for s in sections]}


def write(sections: list[Section], meta: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write bench.md and bench.json; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "bench.md", out_dir / "bench.json"
    for s in sections:
        for name, png in s.images.items():
            (out_dir / name).write_bytes(png)
    md.write_text(markdown(sections, meta))
    js.write_text(json.dumps(to_json(sections, meta), indent=1, default=str, allow_nan=True))
    return md, js


def print_summary(sections: list[Section], console: Console) -> None:
    """Every ratio line, with its target and verdict, as one table."""
    table = Table(title="permbroker benchmarks (median of per-round ratios)")
    for col in ("bench", "figure", "value", "compared with", "target", "verdict"):
        table.add_column(col)
    for s in sections:
        for ln in s.lines:
            style = {"MISSED": "bold red", "met": "green"}.get(ln.verdict, "")
            table.add_row(s.key, ln.what, _fmt(ln.value, ln.unit), ln.reference,
                          ln.target.text if ln.target else "-", ln.verdict or "-", style=style)
    console.print(table)
