"""Read YAML keeping its node tree, so any value can be traced back to its line.

PyYAML's C parser composes nodes quickly, but its generic constructor and Python's cyclic garbage
collector (triggered over and over by the many small objects a large file makes) dominate the
time of a big policy directory. So this module builds plain data from the nodes itself for the
common tags, leaves anything unusual to PyYAML's safe constructor, and pauses the collector.

Policy files are read by every process at start, so reading one must stay cheap whatever it
holds: anchors and aliases are refused before anything is built (a few hundred bytes of nested
aliases expand to gigabytes, the "billion laughs"), nesting is capped, and a scalar PyYAML cannot
convert (``2026-13-45``, an integer of 5,000 digits) is a problem at its line, not a traceback.
"""

from __future__ import annotations

import gc
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"

MAX_DEPTH = 32
"""Deepest nesting of lists and mappings accepted; a real policy needs about ten levels."""
_TOO_DEEP = (
    f"nested more than {MAX_DEPTH} levels deep; no policy needs that many, so check the "
    "indentation and brackets"
)


class YamlProblem(Exception):
    """YAML that cannot be read; ``line`` is 1-based when known."""

    def __init__(self, line: int | None, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"line {line}: {message}" if line else message)


class _Loader(_BaseLoader):
    """A safe loader that records duplicate mapping keys instead of silently keeping the last."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []
        self._resolved: dict[str, str] = {}
        resolvers = self.yaml_implicit_resolvers
        # Characters an implicitly typed plain scalar can start with; None means "any".
        self._typed_first = None if None in resolvers else frozenset(k for k in resolvers if k)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        self.check_duplicates(node)
        return super().construct_mapping(node, deep=deep)

    def check_duplicates(self, node: MappingNode) -> None:
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode):
                line = key_node.start_mark.line
                if key_node.value in seen:
                    self.duplicates.append(
                        (
                            line + 1,
                            f"duplicate key {key_node.value!r} (first at line "
                            f"{seen[key_node.value] + 1}); YAML would silently keep only the "
                            "last one, so remove one of them",
                        )
                    )
                seen.setdefault(key_node.value, line)

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:  # conversions PyYAML does not guard
            raise YamlProblem(node.start_mark.line + 1, _unconvertible(node, exc)) from None

    def refuse_anchors(self) -> None:
        """Raise YamlProblem at the first anchor or alias, before any node is composed."""
        while not self.check_event(yaml.StreamEndEvent):
            event = self.get_event()
            anchor = getattr(event, "anchor", None)
            if event is not None and anchor is not None:
                sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
                mark = event.start_mark
                raise YamlProblem(
                    mark.line + 1 if mark else None,
                    f"{sign}{anchor}: YAML anchors and aliases are not allowed in policy files "
                    "(a few aliases can expand to gigabytes, and a rule should read in full "
                    "where it is written); write the value out in full",
                )

    def resolve(self, kind: type[Node], value: str, implicit: tuple[bool, bool]) -> str:
        # Only plain scalars starting with a character some implicit type (bool, int, null, ...)
        # can start with need the regex search; the answers repeat, so they are cached.
        if kind is ScalarNode and implicit[0]:
            if self._typed_first is not None and value and value[0] not in self._typed_first:
                return _STR
            tag = self._resolved.get(value)
            if tag is None:
                tag = self._resolved[value] = self._resolve(kind, value, implicit)
            return tag
        return self._resolve(kind, value, implicit)

    def _resolve(self, kind: type[Node], value: str, implicit: tuple[bool, bool]) -> str:
        tag: str = super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
        return tag

    def build(self, node: Node, depth: int = 1) -> Any:
        """Construct plain data from a node; unusual tags go to the safe constructor."""
        cls = node.__class__
        if cls is ScalarNode:
            return node.value if node.tag == _STR else self.construct_object(node, deep=True)
        if depth > MAX_DEPTH:
            raise YamlProblem(node.start_mark.line + 1, _TOO_DEEP)
        if cls is SequenceNode and node.tag == _SEQ:
            return [self.build(item, depth + 1) for item in node.value]
        if cls is MappingNode and node.tag == _MAP:
            out = {}
            for key, value in node.value:
                if key.__class__ is not ScalarNode or key.tag != _STR:
                    return self.construct_object(node, deep=True)
                out[key.value] = self.build(value, depth + 1)
            if len(out) != len(node.value):
                self.check_duplicates(node)  # type: ignore[arg-type]
            return out
        return self.construct_object(node, deep=True)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many objects (reference counting
    still frees memory); restores the previous state."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_yaml(text: str | bytes) -> tuple[Node | None, Any, list[tuple[int, str]]]:
    """Parse one YAML document; return (node tree, data, duplicate-key problems as (line, msg)).

    Raises YamlProblem for text that is not valid YAML, or that uses anchors or aliases, nests
    deeper than MAX_DEPTH or holds a scalar that cannot be converted.
    """
    # Without an "&" there can be no anchor, so the event pass is skipped for almost every file.
    if "&" in text if isinstance(text, str) else b"&" in text:
        _refuse_anchors(text)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.build(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise YamlProblem(mark.line + 1 if mark else None, f"invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:
        raise YamlProblem(_line_at(text, exc.position), _reader_problem(exc)) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(None, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise YamlProblem(None, _TOO_DEEP) from None
    finally:
        loader.dispose()
    return node, data, loader.duplicates


def _refuse_anchors(text: str | bytes) -> None:
    loader = _Loader(text)
    try:
        loader.refuse_anchors()
    except yaml.YAMLError:
        pass  # parse_yaml reports the syntax error itself, at its line
    finally:
        loader.dispose()


def _line_at(text: str | bytes, position: int) -> int:
    # libyaml counts the position in bytes for bytes input, in characters for str input.
    if isinstance(text, str):
        return text.count("\n", 0, position) + 1
    return text.count(b"\n", 0, position) + 1


def _reader_problem(exc: yaml.reader.ReaderError) -> str:
    if exc.character == 0:
        return (
            "NUL byte: not allowed in YAML; the file is not plain text (saved as UTF-16, or "
            "binary?): save it as UTF-8 text"
        )
    if isinstance(exc.character, int):
        return f"character {exc.character:#06x} is not allowed in YAML ({exc.reason}); remove it"
    return f"{exc.reason}; save the file as UTF-8 text"


def _unconvertible(node: Node, exc: Exception) -> str:
    kind = node.tag.rsplit(":", 1)[-1]
    reason = str(exc).split(";")[0]
    if not isinstance(node, ScalarNode):
        return f"cannot read this {kind} ({reason})"
    value = node.value if len(node.value) <= 40 else f"{node.value[:37]}..."
    if node.tag == _TIMESTAMP:
        return (
            f"{value!r} is not a real date or time ({exc}); write e.g. 2026-12-31 or "
            "2026-12-31T18:00:00Z"
        )
    return f"{value!r} cannot be read as {kind} ({reason}); quote it if it is text"


def line_of(node: Node, loc: Sequence[str | int]) -> int:
    """Follow a pydantic-style location through a node tree; return the 1-based line.

    A location ending at a mapping key gives the key's line; one that leads off the tree (say, a
    missing field) gives the line of the deepest node that exists.
    """
    line = node.start_mark.line
    current = node
    for part in loc:
        if isinstance(current, MappingNode):
            for key, value in current.value:
                if isinstance(key, ScalarNode) and key.value == str(part):
                    line, current = key.start_mark.line, value
                    break
            else:
                break
        elif isinstance(current, SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(current.value):
                break
            current = current.value[part]
            line = current.start_mark.line
        else:
            break
    return line + 1
