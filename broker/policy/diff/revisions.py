"""The policy directory as it was at a git revision, written out so the loader can read it."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterable
from pathlib import Path

from broker.policy.issues import PolicyIssue
from broker.policy.loader import POLICY_SUFFIXES

DEFAULT_BRANCH = "main"


class GitError(Exception):
    """git could not answer; the message says what to do."""


def _git(cwd: Path, *args: str, stdin: bytes | None = None) -> bytes:
    try:
        result = subprocess.run(  # noqa: S603 - fixed git arguments, no shell
            ["git", *args],  # noqa: S607 - git from PATH, as a developer or CI runs it
            cwd=cwd,
            input=stdin,
            capture_output=True,
            check=False,
        )
    except FileNotFoundError:
        raise GitError(
            "git is not installed or not on PATH; install git or compare two directories"
        ) from None
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise GitError(f"git {args[0]} failed: {detail[-1] if detail else 'no message'}")
    return result.stdout


def _existing(directory: Path) -> Path:
    """The directory, or its nearest existing parent (it may not exist in the working tree)."""
    path = directory.resolve()
    while not path.is_dir():
        path = path.parent
    return path


def repository_path(directory: Path) -> tuple[Path, str]:
    """The repository's top directory and the policy directory's path inside it."""
    start = _existing(directory)
    try:
        top = Path(_git(start, "rev-parse", "--show-toplevel").decode().strip())
    except GitError:
        raise GitError(
            f"{directory} is not inside a git repository; compare two directories instead"
        ) from None
    try:
        inside = directory.resolve().relative_to(top.resolve())
    except ValueError:
        raise GitError(f"{directory} is outside the repository at {top}") from None
    return top, inside.as_posix()


def resolve(top: Path, revision: str) -> str:
    """The commit a revision names, or GitError saying how to get it."""
    if revision.startswith("-"):  # git would read it as an option
        raise GitError(f"{revision!r} is not a git revision (it starts with '-')")
    try:
        return (
            _git(top, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}").decode().strip()
        )
    except GitError:
        raise GitError(
            f"unknown git revision {revision!r}; fetch it first (e.g. git fetch origin "
            f"{DEFAULT_BRANCH}; in CI check out with full history) or pass another --base"
        ) from None


def default_base(top: Path) -> tuple[str, str]:
    """The merge base of HEAD and main (or origin/main): the commit and how to name it."""
    for branch in (DEFAULT_BRANCH, f"origin/{DEFAULT_BRANCH}"):
        try:
            resolve(top, branch)
        except GitError:
            continue
        commit = _git(top, "merge-base", "HEAD", branch).decode().strip()
        return commit, f"merge base of HEAD and {branch}"
    raise GitError(
        f"no {DEFAULT_BRANCH} or origin/{DEFAULT_BRANCH} branch to find the merge base with; "
        "pass --base REV"
    )


def export(top: Path, inside: str, commit: str, destination: Path) -> int:
    """Write the policy files (not sub-directories) at ``commit`` into ``destination``."""
    listing = _git(top, "ls-tree", "-z", commit, "--", f"{inside}/" if inside != "." else ".")
    blobs: list[tuple[str, str]] = []
    for entry in listing.split(b"\0"):
        if not entry:
            continue
        meta, _, name = entry.decode().partition("\t")
        mode, kind, object_id = meta.split()
        file_name = name.rsplit("/", 1)[-1]
        if kind == "blob" and mode in ("100644", "100755") and file_name.endswith(POLICY_SUFFIXES):
            blobs.append((object_id, file_name))
    if not blobs:
        return 0
    output = _git(top, "cat-file", "--batch", stdin="".join(f"{o}\n" for o, _ in blobs).encode())
    position = 0
    for _, file_name in blobs:
        header_end = output.index(b"\n", position)
        size = int(output[position:header_end].split()[2])
        start = header_end + 1
        (destination / file_name).write_bytes(output[start : start + size])
        position = start + size + 1
    return len(blobs)


def relabel(issues: Iterable[PolicyIssue], directory: Path, label: str) -> list[PolicyIssue]:
    """Show issues in an exported directory as ``REV:path/file.yaml``, not a temporary path."""
    prefix = str(directory)
    return [
        dataclasses.replace(issue, path=label + issue.path[len(prefix) :])
        if issue.path.startswith(prefix)
        else issue
        for issue in issues
    ]


@dataclasses.dataclass(frozen=True)
class Side:
    """One side of a diff: where its files are read from, and how to name it to a person."""

    directory: Path
    label: str
    description: str


def git_sides(
    directory: Path, base: str | None, head: str | None, scratch: Path
) -> tuple[Side, Side]:
    """The policy directory at ``base`` (default: merge base with main), at ``head`` or on disk."""
    top, inside = repository_path(directory)
    if base is None:
        commit, how = default_base(top)
        base_side = _exported(top, inside, commit, commit[:12], how, scratch / "base")
    else:
        commit = resolve(top, base)
        base_side = _exported(top, inside, commit, base, commit[:12], scratch / "base")
    if head is None:
        return base_side, Side(directory, str(directory), f"{directory} (working tree)")
    commit = resolve(top, head)
    return base_side, _exported(top, inside, commit, head, commit[:12], scratch / "head")


def _exported(top: Path, inside: str, commit: str, name: str, how: str, destination: Path) -> Side:
    destination.mkdir(parents=True)
    export(top, inside, commit, destination)
    label = f"{name}:{inside}"
    return Side(destination, label, f"{label} ({how})")
