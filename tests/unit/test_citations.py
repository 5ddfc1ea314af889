"""Every file, document and module the repository's prose cites exists in the repository.

Prose: Python comments and docstrings, Markdown, YAML (policies, the generated AsyncAPI
document). A citation is a relative path with a directory (``docs/protocol.md``), a document in
capitals (``README.md``, looked for at the top and in docs/), or a dotted module of ours
(``broker.grants.renewal``, optionally naming something the module defines or imports).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("schemas", "broker", "streams", "tests", "bench", "docs", "policies")
TOP = ("README.md", "Makefile", "pyproject.toml", "docker-compose.yml", "Dockerfile")
SKIP = {".venv", ".git", ".stack", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis",
        "__pycache__", "node_modules", "vendor"}
PATH = re.compile(r"(?<![\w./<>-])((?:[\w-]+/)+[\w.-]+\.(?:md|py|ya?ml|toml|json|rego|lua|sh))\b")
DOC = re.compile(r"(?<![\w./-])([A-Z][A-Z0-9_-]+\.md)\b")
MODULE = re.compile(r"(?<![\w./-])((?:schemas|broker|streams|tests|bench)(?:\.[A-Za-z_]\w*)+)"
                    r"(?!\w|\.\w)")
FILE_SUFFIXES = {"md", "py", "json", "yaml", "yml", "toml"}
# Paths that name what a command writes, not a file kept in the repository.
WRITTEN = {"reports/bench.json": "written by make bench, next to reports/bench.md"}


def sources() -> list[Path]:
    found = [REPO / name for name in TOP if (REPO / name).exists()]
    for root in ROOTS:
        found += [p for p in (REPO / root).rglob("*") if p.is_file()
                  and p.suffix in {".py", ".md", ".yaml", ".yml"}
                  and not SKIP.intersection(p.relative_to(REPO).parts)]
    return sorted(found)


def prose(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of the prose of a file: comments and docstrings of Python, all else."""
    text = path.read_text("utf-8")
    if path.suffix != ".py":
        yield from enumerate(text.splitlines(), 1)
        return
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                for n, line in enumerate(body[0].value.value.splitlines()):
                    yield body[0].lineno + n, line


def module_exists(dotted: str) -> bool:
    """A module or package of ours, or a name a module of ours defines or imports."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:cut])
        source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else (
            base / "__init__.py")
        if source.is_file():
            return not parts[cut:] or parts[cut] in defined(source)
    return False


def defined(source: Path) -> set[str]:
    """Names a module defines (functions, classes, assignments) or imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text("utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def broken() -> list[str]:
    out = []
    for path in sources():
        where = path.relative_to(REPO).as_posix()
        for n, line in prose(path):
            for m in PATH.finditer(line):
                cited = m[1]
                if not (REPO / cited).exists() and not (path.parent / cited).exists() \
                        and cited not in WRITTEN:
                    out.append(f"{where}:{n}: {cited}")
            for m in DOC.finditer(line):
                if not any((REPO / d / m[1]).exists() for d in (".", "docs")):
                    out.append(f"{where}:{n}: {m[1]}")
            for m in MODULE.finditer(line):
                if m[1].rsplit(".", 1)[1] not in FILE_SUFFIXES and not module_exists(m[1]):
                    out.append(f"{where}:{n}: {m[1]}")
    return out


def test_every_cited_file_document_and_module_exists() -> None:
    """No comment, docstring or document cites a file, document or module that is not here."""
    missing = broken()
    assert not missing, "cited but not in the repository:\n" + "\n".join(missing)


def test_the_citation_check_finds_what_it_looks_for() -> None:
    """The patterns see a path, a capitalised document and a module; a real one resolves."""
    line = "see docs/protocol.md, ARCHITECTURE.md and ``broker.grants.renewal.decide_renewal``"
    assert [m[1] for m in PATH.finditer(line)] == ["docs/protocol.md"]
    assert [m[1] for m in DOC.finditer(line)] == ["ARCHITECTURE.md"]
    assert [m[1] for m in MODULE.finditer(line)] == ["broker.grants.renewal.decide_renewal"]
    assert module_exists("broker.grants.renewal.decide_renewal")
    assert module_exists("streams.lifecycle")
    assert not module_exists("broker.renewal")
    assert not module_exists("broker.grants.renewal.no_such_name")
