"""Load a directory of policy YAML files into a PolicySet, failing closed with file:line errors.

Every file is parsed and validated, and every problem in every file is reported at once, each
pointing at the line of the offending YAML node. Any error means nothing is loaded: the caller
keeps the last good policy (or refuses to start).

Reading is bounded (MAX_FILE_BYTES per file, MAX_ENTITLEMENTS in all, plus the YAML limits in
yamlsource), and the people and deny sections must each be present in some file: an empty list
says "none, on purpose", so a deleted people.yaml or deny.yaml cannot pass for an empty one.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from yaml.nodes import MappingNode, Node, SequenceNode

from broker.policy.evaluator import Evaluator
from broker.policy.iam import format_path, session_policy_issues
from broker.policy.issues import PolicyIssue, PolicyLoadError, validation_issues
from broker.policy.model import PolicyFile, PolicySet
from broker.policy.yamlsource import YamlProblem, line_of, parse_yaml, paused_gc

__all__ = [
    "LoadedPolicy",
    "PolicyFiles",
    "PolicyIssue",
    "PolicyLoadError",
    "load_policy_dir",
    "load_policy_files",
    "read_policy_bytes",
    "read_policy_files",
    "read_yaml_file",
]

POLICY_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 1024 * 1024
"""Largest policy file read; 10,000 entitlements fit in a few files of this size."""
MAX_ENTITLEMENTS = 20_000
"""Most entitlements in all files together (twice what the policy benchmark loads in < 1 s)."""
REQUIRED_SECTIONS = {
    "people": "people rules",
    "deny": "deny rules",
}
"""Top-level keys some file must have, even as an empty list, with what they hold."""


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy with what is needed to use, audit and report it."""

    policy: PolicySet
    version_hash: str
    warnings: list[PolicyIssue]
    source_dir: Path
    evaluator: Evaluator


@dataclass(frozen=True)
class PolicyFiles:
    """The bytes of a policy directory's files as read at one moment, before any parsing.

    Reading and validating are apart so a reloading process hashes what it read, skips a
    version it already has or already refused, and validates exactly the bytes it hashed.
    """

    directory: Path
    contents: tuple[tuple[str, bytes], ...]
    """(file name, bytes) of each file read, sorted by name."""
    unreadable: tuple[PolicyIssue, ...] = ()
    """Files that could not be read (or are too large), each with why."""

    @property
    def version(self) -> str:
        """SHA-256 over every file's name and bytes: the policy version hash."""
        digest = hashlib.sha256()
        for name, raw in self.contents:
            digest.update(name.encode() + b"\0" + raw + b"\0")
        for issue in self.unreadable:
            digest.update(b"\1" + str(issue).encode() + b"\0")
        return digest.hexdigest()


@dataclass
class _File:
    display: str
    name: str
    node: Node | None
    data: object = None
    parsed: PolicyFile | None = None

    def line(self, loc: tuple[str | int, ...]) -> int | None:
        return line_of(self.node, loc) if self.node is not None else None

    def item_lines(self, key: str) -> list[int]:
        """1-based lines of the items of a top-level list, e.g. each entitlement."""
        if isinstance(self.node, MappingNode):
            for key_node, value in self.node.value:
                if key_node.value == key and isinstance(value, SequenceNode):
                    return [item.start_mark.line + 1 for item in value.value]
        return []


def yaml_files(directory: Path) -> list[Path]:
    """The ``*.yaml`` and ``*.yml`` files directly in a directory, sorted by name."""
    return sorted(p for p in directory.iterdir() if p.suffix in POLICY_SUFFIXES and p.is_file())


def read_policy_bytes(path: Path) -> bytes | PolicyIssue:
    """Read a file of at most MAX_FILE_BYTES; return its bytes, or the problem."""
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return PolicyIssue(str(path), None, f"cannot read the file ({exc.strerror})")
    if len(raw) > MAX_FILE_BYTES:
        return PolicyIssue(
            str(path),
            None,
            f"file is larger than {MAX_FILE_BYTES // 2**20} MiB; split it into several policy "
            "files (every *.yaml file in the directory is read)",
        )
    return raw


def read_yaml_file(path: Path, raw: bytes) -> tuple[Node | None, object, list[PolicyIssue]]:
    """Parse a file's bytes; return (node tree, data, problems found on the way)."""
    display = str(path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = f"not UTF-8 text (byte {raw[exc.start]:#04x} {exc.reason}); save as UTF-8"
        return None, None, [PolicyIssue(display, line, message)]
    try:
        node, data, duplicates = parse_yaml(raw)  # bytes parse faster than str in libyaml
    except YamlProblem as exc:
        return None, None, [PolicyIssue(display, exc.line, exc.message)]
    return node, data, [PolicyIssue(display, line, message) for line, message in duplicates]


def load_policy_dir(path: str | Path) -> LoadedPolicy:
    """Load and validate every ``*.yaml``/``*.yml`` file in a directory (not recursive).

    Raises PolicyLoadError listing every problem in every file when anything is wrong.
    """
    return load_policy_files(read_policy_files(path))


def read_policy_files(path: str | Path) -> PolicyFiles:
    """Read the policy files of a directory (bounded per file); raise PolicyLoadError if none."""
    directory = Path(path)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise PolicyLoadError(
            [PolicyIssue(str(directory), None, f"policy directory {what}; pass the right path")]
        )
    paths = yaml_files(directory)
    if not paths:
        raise PolicyLoadError(
            [
                PolicyIssue(
                    str(directory),
                    None,
                    "no policy files (*.yaml, *.yml) found; refusing to run without a policy "
                    "(fail closed)",
                )
            ]
        )
    contents: list[tuple[str, bytes]] = []
    unreadable: list[PolicyIssue] = []
    for file_path in paths:
        raw = read_policy_bytes(file_path)
        if isinstance(raw, PolicyIssue):
            unreadable.append(raw)
        else:
            contents.append((file_path.name, raw))
    return PolicyFiles(directory, tuple(contents), tuple(unreadable))


def load_policy_files(files: PolicyFiles) -> LoadedPolicy:
    """Parse and validate files already read; raise PolicyLoadError listing every problem."""
    directory = files.directory
    issues: list[PolicyIssue] = list(files.unreadable)
    with paused_gc():
        parsed_files = [_File(i.path, Path(i.path).name, None) for i in files.unreadable]
        for name, raw in files.contents:
            parsed_files.append(_parse(directory / name, raw, issues))
        parsed_files.sort(key=lambda f: f.name)
        if not _within_entitlement_cap(parsed_files, issues):
            raise PolicyLoadError(issues)
        for file in parsed_files:
            _validate(file, issues)
        _required_sections(directory, parsed_files, issues)
        parsed = [f for f in parsed_files if f.parsed is not None]
        origins = _cross_checks(directory, parsed, issues)
        policy = PolicySet.from_files([f.parsed for f in parsed if f.parsed], origins)
        issues.extend(_warnings(parsed, policy))
        # Free the node trees (a few objects per YAML value) before the collector runs again.
        del parsed_files, parsed
        if any(i.severity == "error" for i in issues):
            raise PolicyLoadError(issues)
        evaluator = Evaluator(policy)
    warnings = sorted(issues, key=lambda i: (i.path, i.line or 0))
    return LoadedPolicy(policy, files.version, warnings, directory, evaluator)


def _parse(file_path: Path, raw: bytes, issues: list[PolicyIssue]) -> _File:
    node, data, problems = read_yaml_file(file_path, raw)
    issues.extend(problems)
    display = str(file_path)
    result = _File(display, file_path.name, node)
    if node is None and problems:
        return result
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        issues.append(
            PolicyIssue(display, 1, f"file is {what}; a policy file is a mapping with version: 1")
        )
        return result
    result.data = data
    return result


def _validate(file: _File, issues: list[PolicyIssue]) -> None:
    if file.data is None:
        return
    try:
        file.parsed = PolicyFile.model_validate(file.data)
    except ValidationError as exc:
        issues.extend(validation_issues(file.display, file.node, exc))


def _within_entitlement_cap(files: list[_File], issues: list[PolicyIssue]) -> bool:
    """Count entitlements before validating any (validation is the costly part)."""
    total = 0
    for file in files:
        lines = file.item_lines("entitlements")
        if total + len(lines) > MAX_ENTITLEMENTS:
            issues.append(
                PolicyIssue(
                    file.display,
                    lines[MAX_ENTITLEMENTS - total],
                    f"more than {MAX_ENTITLEMENTS:,} entitlements in the policy files (this "
                    f"is number {MAX_ENTITLEMENTS + 1:,}); not loaded, as a policy this big is "
                    "more likely generated by mistake than written on purpose",
                )
            )
            return False
        total += len(lines)
    return True


def _required_sections(directory: Path, files: list[_File], issues: list[PolicyIssue]) -> None:
    """A section no file mentions is an error: a lost file must not read as "no rules"."""
    if any(not isinstance(f.data, dict) for f in files):
        return  # a file that could not be read may hold the section; its own error says why
    for key, what in REQUIRED_SECTIONS.items():
        if not any(key in f.data for f in files if isinstance(f.data, dict)):
            issues.append(
                PolicyIssue(
                    str(directory),
                    None,
                    f"no policy file has a `{key}:` section, so {key}.yaml may have been "
                    f"deleted or not copied; if there are no {what} on purpose, add {key}.yaml "
                    f"holding `version: 1` and `{key}: []`",
                )
            )


def _cross_checks(directory: Path, files: list[_File], issues: list[PolicyIssue]) -> dict[str, str]:
    """Check what spans files (unique ids, one default_kind); return where each rule is."""
    origins: dict[str, str] = {}
    first_seen: dict[str, tuple[_File, int]] = {}
    default_kind: tuple[str, str] | None = None
    deny_count = people_count = 0
    for file in files:
        assert file.parsed is not None  # noqa: S101 - filtered by the caller
        lines = file.item_lines("entitlements")
        for index, ent in enumerate(file.parsed.entitlements):
            if ent.id in first_seen:
                other, other_index = first_seen[ent.id]
                issues.append(
                    PolicyIssue(
                        file.display,
                        file.line(("entitlements", index, "id")),
                        f"duplicate entitlement id {ent.id!r}: also defined at {other.display}:"
                        f"{other.line(('entitlements', other_index, 'id'))}; ids must be unique "
                        "across all policy files",
                    )
                )
                continue
            first_seen[ent.id] = (file, index)
            origins[f"entitlement:{ent.id}"] = f"{file.name}:{lines[index]}"
        for line in file.item_lines("deny"):
            origins[f"deny:{deny_count}"] = f"{file.name}:{line}"
            deny_count += 1
        _detection_origins(file, origins, issues)
        for line in file.item_lines("people"):
            origins[f"people:{people_count}"] = f"{file.name}:{line}"
            people_count += 1
        if file.parsed.default_kind:
            here = f"{file.display}:{file.line(('default_kind',))}"
            if default_kind and default_kind[0] != file.parsed.default_kind:
                issues.append(
                    PolicyIssue(
                        file.display,
                        file.line(("default_kind",)),
                        f"default_kind {file.parsed.default_kind!r} conflicts with "
                        f"{default_kind[0]!r} at {default_kind[1]}; set it in one file only",
                    )
                )
            default_kind = default_kind or (file.parsed.default_kind, here)
    if files and not first_seen and not any(i.severity == "error" for i in issues):
        issues.append(
            PolicyIssue(
                str(directory),
                None,
                "no entitlements defined in any policy file; refusing to run with a policy that "
                "allows nothing by accident (fail closed)",
            )
        )
    return origins


def _detection_origins(file: _File, origins: dict[str, str], issues: list[PolicyIssue]) -> None:
    """Record where each detection rule is; a rule id used twice is an error at both places."""
    assert file.parsed is not None  # noqa: S101 - filtered by the caller
    lines = file.item_lines("detections")
    for index, rule in enumerate(file.parsed.detections):
        key = f"detection:{rule.id}"
        if key in origins:
            issues.append(
                PolicyIssue(
                    file.display,
                    file.line(("detections", index, "id")),
                    f"duplicate detection rule id {rule.id!r}: also defined at {origins[key]}; "
                    "ids must be unique across all policy files",
                )
            )
            continue
        origins[key] = f"{file.name}:{lines[index]}"


def _warnings(files: list[_File], policy: PolicySet) -> list[PolicyIssue]:
    ids = [e.id for e in policy.entitlements]
    warnings: list[PolicyIssue] = []
    for file in files:
        assert file.parsed is not None  # noqa: S101 - filtered by the caller
        for index, rule in enumerate(file.parsed.deny):
            for number, glob in enumerate(rule.entitlements):
                if not fnmatch.filter(ids, glob):
                    warnings.append(
                        PolicyIssue(
                            file.display,
                            file.line(("deny", index, "entitlements", number)),
                            f"deny pattern {glob!r} matches no entitlement; check the id "
                            "(it will apply to any entitlement added later with a matching id)",
                            "warning",
                        )
                    )
        for index, ent in enumerate(file.parsed.entitlements):
            if ent.session_policy is None:
                continue
            for issue in session_policy_issues(ent.session_policy):
                loc = ("entitlements", index, "session_policy", *issue.path)
                warnings.append(
                    PolicyIssue(
                        file.display,
                        file.line(loc),
                        f"entitlement {ent.id}: {format_path(loc[2:])}: {issue.message}",
                        "warning",
                    )
                )
    return warnings
