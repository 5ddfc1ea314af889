"""No test module imports another test module or a conftest: what tests share is in tests/support.

Read from the source with ast (absolute, relative, in-function and dynamic imports), over every
Python file of tests/ and bench/.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("tests", "bench")
SHARED = "tests.support"


def _package(path: Path, root: Path) -> list[str]:
    return list(path.relative_to(root).with_suffix("").parts)[:-1]


def imported(path: Path, root: Path = REPO) -> Iterator[tuple[int, str]]:
    """(line, module) of each import of a file; ``from a import b`` also yields ``a.b``."""
    for node in ast.walk(ast.parse(path.read_text("utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package(path, root)
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            yield node.lineno, base
            yield from ((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def is_test_code(module: str) -> bool:
    """A test module or a conftest (anything of tests/ but tests/support), by dotted name."""
    parts = module.split(".")
    if any(p == "conftest" or p.startswith("test_") for p in parts):
        return True
    return parts[0] == "tests" and len(parts) > 1 and not module.startswith(SHARED)


def offences(files: list[Path], root: Path = REPO) -> list[str]:
    """``file:line imports module`` for each import of a test module or a conftest."""
    return sorted({f"{path.relative_to(root)}:{line} imports {module}"
                   for path in files for line, module in imported(path, root)
                   if is_test_code(module)})


def test_no_test_module_imports_another_test_module_or_a_conftest() -> None:
    """Fixtures live in a conftest or tests/support; helpers, factories and waits in support."""
    files = sorted(p for root in SCANNED for p in (REPO / root).rglob("*.py"))
    found = offences(files)
    assert not found, "move what is shared to tests/support:\n  " + "\n  ".join(found)


def test_the_rule_sees_every_form_of_such_an_import(tmp_path: Path) -> None:
    """Absolute, relative, in-function and dynamic imports of test code are all found."""
    unit = tmp_path / "tests" / "unit" / "policy"
    unit.mkdir(parents=True)
    source = unit / "test_a.py"
    source.write_text(
        "from tests.unit.policy.test_b import BASE\n"
        "from . import conftest\n"
        "from .test_c import helper\n"
        "import tests.integration.conftest\n"
        "from tests.faults import test_flood\n"
        "from tests.support.waits import wait_until\n"
        "from tests.support import fixtures\n"
        "def f():\n"
        "    import importlib\n"
        "    importlib.import_module('tests.unit.test_schemas')\n"
    )
    found = offences([source], tmp_path)
    assert {int(line.split(":")[1].split()[0]) for line in found} == {1, 2, 3, 4, 5, 10}, found
