"""Read YAML keeping its node tree, so any value can be traced back to its line.

PyYAML's C parser composes nodes quickly, but its generic constructor and Python's cyclic garbage
collector (triggered over and over by the many small objects a large file makes) dominate the
time of a big policy directory. So this module builds plain data from the nodes itself for the
common tags, leaves anything unusual to PyYAML's safe constructor, and pauses the collector.
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

    def build(self, node: Node) -> Any:
        """Construct plain data from a node; unusual tags go to the safe constructor."""
        cls = node.__class__
        if cls is ScalarNode:
            return node.value if node.tag == _STR else self.construct_object(node, deep=True)
        if cls is SequenceNode and node.tag == _SEQ:
            return [self.build(item) for item in node.value]
        if cls is MappingNode and node.tag == _MAP:
            out = {}
            for key, value in node.value:
                if key.__class__ is not ScalarNode or key.tag != _STR:
                    return self.construct_object(node, deep=True)
                out[key.value] = self.build(value)
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

    Raises YamlProblem for text that is not valid YAML.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.build(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise YamlProblem(mark.line + 1 if mark else None, problem) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(None, str(exc)) from None
    except RecursionError:
        raise YamlProblem(None, "nested too deeply (or an alias refers to itself)") from None
    finally:
        loader.dispose()
    return node, data, loader.duplicates


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
