"""The people a diff is computed for: a file the operator exports from the identity provider.

A YAML or JSON list of ``{email, groups, kind, claims}`` (only email required), or a CSV file
with a header row: ``email``, ``groups`` (separated by ``,`` or ``;``), ``kind``, and any other
column taken as a claim of that name. Problems are reported at their line where one is known.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from broker.policy.issues import PolicyIssue, PolicyLoadError
from broker.policy.loader import read_yaml_file
from broker.policy.model import KINDS
from broker.policy.yamlsource import line_of, paused_gc

_FIELDS = ("email", "groups", "kind", "claims")
_SPLIT = re.compile(r"[,;]")


@dataclass(frozen=True)
class DirectoryPerson:
    """One person as the identity provider knows them."""

    email: str
    groups: frozenset[str] = frozenset()
    kind: str | None = None
    claims: Mapping[str, object] = field(default_factory=dict)


def load_directory(path: str | Path) -> list[DirectoryPerson]:
    """Read a people file (by suffix: .yaml, .yml, .json or .csv).

    Raises PolicyLoadError listing every problem, each as path:line where a line is known.
    """
    path = Path(path)
    display = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyLoadError(
            [PolicyIssue(display, None, f"cannot read ({exc.strerror})")]
        ) from None
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".yaml", ".yml", ".json"):
        message = "unknown people file type; use .yaml, .yml, .json or .csv"
        raise PolicyLoadError([PolicyIssue(display, None, message)])
    with paused_gc():
        if suffix == ".csv":
            people, issues = _from_csv(display, raw)
        else:
            people, issues = _from_document(path, raw, suffix == ".json")
    seen: dict[str, int | None] = {}
    for person, line in people:
        key = person.email.lower()
        if key in seen:
            first = f" (first at line {seen[key]})" if seen[key] else ""
            issues.append(PolicyIssue(display, line, f"{person.email} appears twice{first}"))
        seen.setdefault(key, line)
    if issues:
        raise PolicyLoadError(issues)
    if not people:
        raise PolicyLoadError([PolicyIssue(display, None, "no people in the file")])
    return [person for person, _ in people]


def _person(email: object, groups: object, kind: object, claims: object) -> DirectoryPerson | str:
    """Build one person, or say what is wrong with the entry."""
    if not isinstance(email, str) or "@" not in email:
        return f"email {email!r} is not an email address"
    if isinstance(groups, str):
        groups = [g.strip() for g in _SPLIT.split(groups) if g.strip()]
    if groups is None:
        groups = []
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        return f"{email}: groups must be a list of names (or one string separated by , or ;)"
    if kind in (None, ""):
        kind = None
    elif kind not in KINDS:
        return f"{email}: kind {kind!r} is not one of {', '.join(KINDS)}"
    if claims is None:
        claims = {}
    if not isinstance(claims, dict):
        return f"{email}: claims must be a mapping of claim name to value"
    return DirectoryPerson(email, frozenset(groups), kind, dict(claims))


def _from_document(
    path: Path, raw: bytes, is_json: bool
) -> tuple[list[tuple[DirectoryPerson, int | None]], list[PolicyIssue]]:
    display = str(path)
    node = None
    if is_json:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return [], [PolicyIssue(display, getattr(exc, "lineno", None), f"invalid JSON: {exc}")]
    else:
        node, data, issues = read_yaml_file(path, raw)
        if issues:
            return [], issues
    if not isinstance(data, list):
        return [], [PolicyIssue(display, 1, "a people file is a list of {email, groups, kind}")]
    people: list[tuple[DirectoryPerson, int | None]] = []
    issues = []
    for index, item in enumerate(data):
        line = line_of(node, (index,)) if node is not None else None
        where = "" if line is not None else f"[{index}]: "
        if not isinstance(item, dict):
            issues.append(PolicyIssue(display, line, f"{where}expected a mapping with an email"))
            continue
        unknown = sorted(set(item) - set(_FIELDS))
        if unknown:
            message = f"{where}unknown field {unknown[0]!r}; use {', '.join(_FIELDS)}"
            issues.append(PolicyIssue(display, line, message))
            continue
        found = _person(item.get("email"), item.get("groups"), item.get("kind"), item.get("claims"))
        if isinstance(found, str):
            issues.append(PolicyIssue(display, line, where + found))
        else:
            people.append((found, line))
    return people, issues


def _from_csv(
    display: str, raw: bytes
) -> tuple[list[tuple[DirectoryPerson, int | None]], list[PolicyIssue]]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [PolicyIssue(display, None, f"not UTF-8 text ({exc.reason}); save as UTF-8")]
    reader = csv.DictReader(io.StringIO(text))
    if "email" not in (reader.fieldnames or ()):
        return [], [PolicyIssue(display, 1, "the header row needs an email column")]
    people: list[tuple[DirectoryPerson, int | None]] = []
    issues = []
    for row in reader:
        claims = {k: v for k, v in row.items() if k not in _FIELDS and k and v}
        found = _person(row.get("email"), row.get("groups") or "", row.get("kind"), claims)
        if isinstance(found, str):
            issues.append(PolicyIssue(display, reader.line_num, found))
        else:
            people.append((found, reader.line_num))
    return people, issues
