"""The README is a front door and every page of the docs site renders as written.

Every line that looks like a table row must be inside a table the Markdown parser renders (a
table glued to the paragraph above renders as text on the site: Python-Markdown, unlike
markdown-it, does not let a table interrupt a paragraph); the docs describe the product as it
is, with no issue numbers or change history.
"""

from __future__ import annotations

import re
from pathlib import Path

from markdown_it import MarkdownIt

REPO = Path(__file__).resolve().parents[3]
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").rglob("*.md"))
ROW = re.compile(r"^\s*\|.*\|\s*$")
DELIMITER = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)+\|?\s*$")
# Change history does not belong in docs: issue numbers, "what changed", "(was ...)".
HISTORY = re.compile(r"\bissues?\s*#?\d+|(?<![&\w])#\d+\b|\bwhat changed\b|\bchangelog\b"
                     r"|\(was\b|\bnow fix(?:es|ed)\b|\bsince v\d", re.IGNORECASE)
_MD = MarkdownIt("commonmark").enable("table")


def stray_table_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every table-looking line that is not in a rendered table."""
    lines = text.splitlines()
    covered: set[int] = set()
    for token in _MD.parse(text):
        if token.map is None or token.type not in ("table_open", "fence", "code_block",
                                                   "html_block"):
            continue
        start, end = token.map
        if token.type == "table_open" and start > 0 and lines[start - 1].strip():
            continue  # glued to the paragraph above: the site renders it as text
        covered.update(range(start, end))
    return [(n + 1, line) for n, line in enumerate(lines)
            if n not in covered and (ROW.match(line) or DELIMITER.match(line))]


def history(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every mention of an issue number or of what changed."""
    return [(n, line) for n, line in enumerate(text.splitlines(), 1) if HISTORY.search(line)]


def _documents() -> list[Path]:
    return [README, *PAGES]


def test_the_readme_is_a_front_door() -> None:
    """At most 250 lines, with the two commands, a quick start and links into the docs site."""
    text = README.read_text("utf-8")
    assert len(text.splitlines()) <= 250
    for needed in ("make demo", "make test", "## Quick start", "## How it works",
                   "## Invariants", "docs/protocol.md", "docs/reference/configuration.md"):
        assert needed in text, needed


def test_the_readme_invariant_table_names_test_files_that_exist() -> None:
    """Each invariant row names at least one test file, and every file it names exists."""
    text = README.read_text("utf-8")
    section = text.split("## Invariants", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if ROW.match(line)][2:]
    assert len(rows) >= 8
    for row in rows:
        files = re.findall(r"`(tests/[\w/]+\.py)`", row)
        assert files, row
        assert all((REPO / f).is_file() for f in files), row


def test_every_table_row_is_in_a_rendered_table() -> None:
    """No line of the README or a docs page looks like a table row but renders as text."""
    stray = [f"{doc.relative_to(REPO)}:{n}: {line}" for doc in _documents()
             for n, line in stray_table_lines(doc.read_text("utf-8"))]
    assert not stray, "table rows that do not render as a table:\n" + "\n".join(stray)


def test_no_issue_numbers_or_change_history() -> None:
    """The README and the docs describe the product as it is."""
    found = [f"{doc.relative_to(REPO)}:{n}: {line.strip()}" for doc in _documents()
             for n, line in history(doc.read_text("utf-8"))]
    assert not found, "history in the docs:\n" + "\n".join(found)


def test_the_checks_find_what_they_look_for() -> None:
    """A glued table, a row without a table and a history line are found; a table, a code
    block and a pipe inside a sentence are not."""
    sample = "\n".join([
        "Text right above",                 # 1
        "| a | b |",                        # 2: glued to the paragraph: renders as text
        "|---|---|",                        # 3
        "",                                 # 4
        "| a | b |",                        # 5: a real table
        "|---|---|",                        # 6
        "| 1 | 2 |",                        # 7
        "",                                 # 8
        "| lonely | row |",                 # 9: no delimiter row: text
        "",                                 # 10
        "```",                              # 11
        "| in | code |",                    # 12
        "```",                              # 13
        "a | b in a sentence",              # 14
    ])
    assert [n for n, _ in stray_table_lines(sample)] == [2, 3, 9]
    lines = "fixed in issue 7\nsee #12\nwhat changed (issue 7)\n1,794 B (was ~2,850 B)\n&#39; ok"
    assert [n for n, _ in history(lines)] == [1, 2, 3, 4]
