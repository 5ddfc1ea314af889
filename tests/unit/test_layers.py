"""Import direction of the layers, by path, read from the source with ast.

schemas/ (L0) imports pydantic and the stdlib; the pure core (broker/errors, scopes, config and the
capability packages) imports an allow-list; L2 (broker/adapters, sdk, stack) never imports L3
(broker/cli, api, demo, streams); adapters never import the SDKs; nothing imports streams.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "broker", "streams")
OURS = frozenset(PACKAGES) | {"tests", "bench", "policies"}

# The pure core, by path: these files and every module under these packages.
CORE_FILES = ("broker/__init__.py", "broker/errors.py", "broker/scopes.py", "broker/config.py")
CORE_PACKAGES = ("policy", "grants", "identity", "behaviour", "audit", "delivery")
# What the core may import: the standard library and this allow-list (nothing else).
CORE_ALLOWED = (
    "schemas", "broker.errors", "broker.scopes", "broker.config",
    *(f"broker.{package}" for package in CORE_PACKAGES),
    "pydantic", "pydantic_core", "pydantic_settings", "cel", "yaml",
    # CEL's reference type checker, and the protobuf descriptors it takes declared types as.
    "cel_expr_python", "google.protobuf",
)
# L2 (I/O behind ports, SDKs, dev tooling) and L3 (entry points), by path.
L2_DIRS = ("broker/adapters", "broker/sdk", "broker/stack")
L3 = ("broker.cli", "broker.api", "broker.demo", "streams")
SCHEMAS_ALLOWED = frozenset({"pydantic", "pydantic_core", "__future__"})


@dataclass(frozen=True)
class Import:
    """One module a file imports, where."""

    path: Path
    line: int
    module: str

    @property
    def file(self) -> str:
        return str(self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path)

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.module}"


def sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (REPO / pkg).rglob("*.py"))


def _package_of(path: Path, root: Path) -> list[str]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return parts[:-1]  # a module's package; for __init__.py, its own package


def _absolute(path: Path, root: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = _package_of(path, root)
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _dynamic(node: ast.Call) -> str | None:
    """The literal module of ``importlib.import_module("x")`` or ``__import__("x")``."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imports(path: Path, root: Path = REPO) -> Iterator[Import]:
    """Every import of a file (module level, in functions, under TYPE_CHECKING, dynamic).

    ``from a import b`` is reported as ``a.b``: b may be a submodule (``from broker import cli``).
    """
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(path, root, node)
            for alias in node.names:
                name = base if alias.name == "*" else f"{base}.{alias.name}"
                yield Import(path, node.lineno, name)
        elif isinstance(node, ast.Call) and (target := _dynamic(node)) is not None:
            yield Import(path, node.lineno, target)


def matches(module: str, pattern: str) -> bool:
    """``a.b`` matches ``a.b`` and ``a.b.c``; ``a.b*`` also matches ``a.bc``."""
    if pattern.endswith("*"):
        return module.startswith(pattern[:-1])
    return module == pattern or module.startswith(pattern + ".")


def violations(files: list[Path], forbidden: tuple[str, ...], *, root: Path = REPO) -> list[str]:
    """``file:line imports module`` for each forbidden import."""
    found = {
        imp
        for path in files
        for imp in imports(path, root)
        if any(matches(imp.module, pattern) for pattern in forbidden)
    }
    return sorted(str(imp) for imp in found)


def core_files() -> list[Path]:
    return [REPO / f for f in CORE_FILES] + sources(*(f"broker/{p}" for p in CORE_PACKAGES))


def outside_core(path: Path, root: Path = REPO) -> list[str]:
    """Imports of a core file that are neither stdlib nor on the allow-list."""
    return [
        str(imp)
        for imp in imports(path, root)
        if imp.module.split(".")[0] != "__future__"
        and not (imp.module.split(".")[0] in sys.stdlib_module_names
                 and imp.module.split(".")[0] not in OURS)
        and not any(matches(imp.module, allowed) for allowed in CORE_ALLOWED)
    ]


def report(rule: str, found: list[str]) -> str:
    return f"{rule}:\n  " + "\n  ".join(found)


# --- the scanner itself -----------------------------------------------------------------------


def test_scanner_sees_every_form_of_import(tmp_path: Path) -> None:
    """Plain, from, relative, nested, TYPE_CHECKING and literal dynamic imports are all found."""
    probe = tmp_path / "broker" / "policy" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "import redis.asyncio as r\n"
        "from broker import cli\n"
        "from ..adapters import codec\n"
        "from . import model\n"
        "if TYPE_CHECKING:\n    from streams.app import create_app\n"
        "def f():\n    import faust\n    importlib.import_module('jwt')\n"
    )
    found = {(i.line, i.module) for i in imports(probe, tmp_path)}
    assert {
        (1, "redis.asyncio"),
        (2, "broker.cli"),
        (3, "broker.adapters.codec"),
        (4, "broker.policy.model"),
        (6, "streams.app.create_app"),
        (8, "faust"),
        (9, "jwt"),
    } <= found
    assert violations([probe], ("broker.cli", "jwt"), root=tmp_path) == [
        f"{probe}:2 imports broker.cli",
        f"{probe}:9 imports jwt",
    ]
    assert outside_core(probe, tmp_path) == [
        f"{probe}:1 imports redis.asyncio",
        f"{probe}:2 imports broker.cli",
        f"{probe}:3 imports broker.adapters.codec",
        f"{probe}:6 imports streams.app.create_app",
        f"{probe}:8 imports faust",
        f"{probe}:9 imports jwt",
    ]
    assert matches("broker.cli.main", "broker.cli")
    assert not matches("broker.client", "broker.cli")
    assert not matches("redisx", "redis")
    assert matches("redis.asyncio", "redis")


def test_every_layer_has_sources() -> None:
    """The scan covers real files (a moved package would silently pass every rule)."""
    for package in PACKAGES:
        assert sources(package), package
    names = {str(p.relative_to(REPO)) for p in core_files()}
    assert {"broker/grants/decide.py", "broker/scopes.py", "broker/policy/evaluate.py"} <= names
    assert all((REPO / d).is_dir() and sources(d) for d in L2_DIRS)
    assert not any(n.startswith(("broker/cli", "broker/api", "broker/demo")) for n in names)


# --- the rules --------------------------------------------------------------------------------


def test_schemas_import_only_pydantic_and_stdlib() -> None:
    """L0 imports nothing of ours outside schemas, and no third party but pydantic."""
    found = sorted(
        {
            str(imp)
            for path in sources("schemas")
            for imp in imports(path)
            if (top := imp.module.split(".")[0]) != "schemas"
            and top not in SCHEMAS_ALLOWED
            and (top in OURS or top not in sys.stdlib_module_names)
        }
    )
    assert not found, report("schemas/ may import only pydantic, stdlib and schemas", found)


def test_core_imports_only_its_allow_list() -> None:
    """The pure core imports the stdlib, schemas, the core and an allow-list of libraries only."""
    found = sorted(imp for path in core_files() for imp in outside_core(path))
    assert not found, report("the pure core may import only " + ", ".join(CORE_ALLOWED), found)


def test_l2_never_imports_the_shell() -> None:
    """L2 (broker/adapters, sdk, stack) never reaches up into the CLI, API, demo or streams."""
    found = violations(sources(*L2_DIRS), L3)
    assert not found, report(", ".join(L2_DIRS) + " may not import " + ", ".join(L3), found)


def test_adapters_never_import_the_sdk() -> None:
    """Adapters are below the SDKs: broker/adapters never imports broker.sdk."""
    found = violations(sources("broker/adapters"), ("broker.sdk",))
    assert not found, report("broker/adapters may not import broker.sdk", found)


def test_nothing_outside_streams_imports_streams() -> None:
    """streams/ is the outermost worker: schemas/ and broker/ never import it."""
    found = violations(sources("schemas", "broker"), ("streams",))
    assert not found, report("only streams/ may import streams", found)


@pytest.mark.parametrize("path", sources(*PACKAGES), ids=lambda p: str(p.relative_to(REPO)))
def test_module_opens_with_a_docstring(path: Path) -> None:
    """Every module opens with a docstring whose first line says what it holds."""
    tree = ast.parse(path.read_text("utf-8"))
    docstring = ast.get_docstring(tree)
    assert docstring, f"{path.relative_to(REPO)}:1 has no module docstring"
    assert docstring.splitlines()[0].strip(), f"{path.relative_to(REPO)}:1 docstring opens blank"
