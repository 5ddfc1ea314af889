"""Bundle files, content hash, YAML with line numbers. Imports yaml, broker.errors, stdlib.

This is the only module of the policy core that touches the file system.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from broker.errors import PolicyError

BUNDLE_SUFFIXES = (".yaml", ".yml")


class LineMap(dict[str, object]):
    """A YAML mapping that knows its own line and the line of each key (1-based).

    It also keeps where each scalar value is written in its file, so that a position inside a
    value (a column of a CEL expression) can be pointed at in the file.
    """

    def __init__(self, line: int, text: str = "") -> None:
        super().__init__()
        self.line = line
        self.lines: dict[str, int] = {}
        self.text = text  # the whole file the mapping was read from
        self.spans: dict[str, tuple[int, int, str | None]] = {}  # key -> start, end, style

    def line_of(self, key: str) -> int:
        """The line of ``key``, or of the mapping itself when the key is absent."""
        return self.lines.get(key, self.line)

    def position(self, key: str, offset: int) -> tuple[int, int | None]:
        """(line, column), 1-based, in the file of character ``offset`` of the string value of
        ``key``; the key's line and no column when that cannot be told."""
        value, span = self.get(key), self.spans.get(key)
        if not isinstance(value, str) or span is None or not self.text:
            return self.line_of(key), None
        index = _index_in_file(value, offset, self.text, span)
        start = self.text.rfind("\n", 0, index) + 1
        return self.text.count("\n", 0, index) + 1, index - start + 1


class LineList(list[object]):
    """A YAML sequence that knows its own line and the line of each item (1-based)."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.lines: list[int] = []


@dataclass(frozen=True)
class Document:
    """One YAML document of a bundle file."""

    file: str
    body: LineMap


@dataclass(frozen=True)
class Bundle:
    """The files of a bundle, read once: documents in file order and the content revision."""

    source: str
    revision: str
    documents: tuple[Document, ...]
    files: tuple[tuple[str, bytes], ...] = ()  # (file name, bytes): what the revision hashes


def _index_in_file(value: str, offset: int, text: str, span: tuple[int, int, str | None]) -> int:
    """Where character ``offset`` of a scalar's value is written in the file's ``text``.

    Folding, block indentation, quotes and escapes only add or change whitespace and quoting
    around the value's characters, so each non-space character of the value is found in order.
    """
    start, end, style = span
    if style in ("|", ">"):
        start = text.find("\n", start, end) + 1  # past the block header (``>-``)
    elif style in ("'", '"'):
        start += 1  # past the opening quote
    index = start
    for char in value[: offset + 1]:
        if char.isspace():
            continue
        found = text.find(char, index, end)
        if found < 0:
            break
        index = found + 1
    return max(index - 1, start)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader building LineMap/LineList and rejecting duplicate or non-string keys."""

    def __init__(self, stream: bytes, file: str) -> None:
        super().__init__(stream)
        self.file = file
        self.text = stream.decode("utf-8", errors="replace")


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> LineMap:
    loader.flatten_mapping(node)
    result = LineMap(node.start_mark.line + 1, loader.text)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise PolicyError(f"key {key!r} must be a string", file=loader.file, line=line)
        if key in result:
            raise PolicyError(f"duplicate key {key!r} (first at line {result.lines[key]})",
                              file=loader.file, line=line)
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = line
        if isinstance(value_node, yaml.ScalarNode):
            result.spans[key] = (value_node.start_mark.index, value_node.end_mark.index,
                                 value_node.style)
    return result


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode) -> LineList:
    result = LineList(node.start_mark.line + 1)
    for item in node.value:
        result.append(loader.construct_object(item, deep=True))
        result.lines.append(item.start_mark.line + 1)
    return result


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def parse_yaml(data: bytes, file: str) -> list[Document]:
    """Every document of one file; each must be a mapping. Raises PolicyError with the line."""
    loader = _LineLoader(data, file)
    documents: list[Document] = []
    try:
        while loader.check_data():  # type: ignore[no-untyped-call]
            line = loader.peek_event().start_mark.line + 1  # type: ignore[no-untyped-call]
            body = loader.get_data()
            if not isinstance(body, LineMap):
                raise PolicyError("a document must be a mapping with apiVersion and kind",
                                  file=file, line=line)
            documents.append(Document(file, body))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise PolicyError(f"invalid YAML: {exc.problem or exc}", file=file, line=line) from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"invalid YAML: {exc}", file=file) from exc
    finally:
        loader.dispose()
    return documents


def bundle_files(path: Path) -> list[Path]:
    """The .yaml/.yml files of a bundle directory (top level, sorted), or the one file given."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in BUNDLE_SUFFIXES and p.is_file())
        if not files:
            raise PolicyError("no .yaml files in the bundle directory", file=str(path))
        return files
    raise PolicyError("no such policy file or directory", file=str(path))


def content_revision(contents: list[tuple[str, bytes]]) -> str:
    """``sha256:`` + 16 hex of a hash over the sorted file names and their bytes."""
    digest = hashlib.sha256()
    for name, data in sorted(contents):
        # Length-prefix each part so no two different bundles can hash the same stream.
        for part in (name.encode(), data):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return "sha256:" + digest.hexdigest()[:16]


def read_bundle(path: str | Path) -> Bundle:
    """Read every file of a bundle once: its documents and its content revision."""
    root = Path(path)
    contents: list[tuple[str, bytes]] = []
    for file in bundle_files(root):
        try:
            contents.append((file.name, file.read_bytes()))
        except OSError as exc:
            raise PolicyError(f"cannot read: {exc.strerror}", file=str(file)) from exc
    prefix = str(root) + "/" if root.is_dir() else str(root.parent) + "/"
    return bundle_of(contents, str(root), prefix=prefix)


def bundle_of(contents: list[tuple[str, bytes]], source: str, *, prefix: str = "") -> Bundle:
    """A bundle from file names and bytes already in memory (e.g. recorded in the audit log)."""
    documents: list[Document] = []
    for name, data in contents:
        parsed = parse_yaml(data, prefix + name)
        if not parsed:
            raise PolicyError("the file holds no YAML document", file=prefix + name)
        documents.extend(parsed)
    return Bundle(source, content_revision(contents), tuple(documents), tuple(contents))
