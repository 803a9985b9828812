"""Editing `~/.aws/credentials` and `~/.aws/config` without disturbing anything else in them.

The files are edited as text, not round-tripped through configparser, so every other profile,
comment, blank line and key order stays byte for byte. Inside the one section the broker
writes, only the keys it owns are replaced, where they were; a section the broker did not
write (no `x_broker_managed = true`) is left alone unless the person passes `--force`.

Writes are atomic (temporary file in the same directory, fsync, `os.replace`), mode 0600,
and serialized by a lock on a sidecar `<file>.lock` (`flock` on POSIX, `msvcrt.locking` on
Windows), so concurrent `broker` runs that write different profiles all keep theirs. A
symlinked file (dotfile managers) is written through to its target.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from broker.cli.client.errors import ClientError
from broker.cli.client.locking import file_lock
from broker.cli.client.store import write_private

MANAGED_KEY = "x_broker_managed"
EXPIRATION_KEY = "x_broker_expiration"
ENTITLEMENT_KEY = "x_broker_entitlement"
CREDENTIAL_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
PROFILE_NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,64}$")

_HEADER = re.compile(r"^\s*\[(?P<name>[^\]]+)\]\s*(?:[#;].*)?$")
_OPTION = re.compile(r"^(?P<key>[^\s=:#;\[][^=:]*?)\s*[=:]")


def credentials_path() -> Path:
    """`$AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`."""
    return Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials").expanduser()


def config_path() -> Path:
    """`$AWS_CONFIG_FILE`, else `~/.aws/config`."""
    return Path(os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config").expanduser()


def check_profile_name(profile: str) -> str:
    """The profile name, or a ClientError for one the AWS files cannot hold safely."""
    if not PROFILE_NAME.match(profile):
        raise ClientError(
            f"{profile!r} is not a usable profile name.",
            hint="Use letters, digits and . _ - @ + (at most 64).",
        )
    return profile


class NotOurs(ClientError):
    """The profile exists and the broker did not write it."""


@dataclass(frozen=True)
class Section:
    """A section's header line and the line after its last line (indices into the lines)."""

    name: str
    header: int
    end: int


def sections(lines: list[str]) -> list[Section]:
    """Every `[section]` of an INI text split into lines (with their line endings)."""
    found: list[tuple[str, int]] = []
    for index, line in enumerate(lines):
        match = _HEADER.match(line)
        if match and not line[:1].isspace():
            found.append((match["name"].strip(), index))
    return [
        Section(name, start, found[i + 1][1] if i + 1 < len(found) else len(lines))
        for i, (name, start) in enumerate(found)
    ]


def option_name(line: str) -> str | None:
    """The (lower-cased, as configparser sees it) key a line sets, or None."""
    if not line.strip() or line[:1].isspace() or line.lstrip()[:1] in ("#", ";"):
        return None
    match = _OPTION.match(line)
    return match["key"].strip().lower() if match else None


def section_options(lines: list[str], section: Section) -> dict[str, str]:
    """The keys and (raw, stripped) values of one section."""
    values: dict[str, str] = {}
    for line in lines[section.header + 1 : section.end]:
        key = option_name(line)
        if key is not None:
            values[key] = re.split(r"[=:]", line, maxsplit=1)[1].strip()
    return values


def is_managed(options: Mapping[str, str]) -> bool:
    """True for a section the broker wrote."""
    return options.get(MANAGED_KEY, "").lower() == "true"


def find_section(lines: list[str], names: tuple[str, ...], path: Path) -> Section | None:
    """The one section called any of `names`; a duplicate is refused (the AWS CLI would too)."""
    matches = [s for s in sections(lines) if " ".join(s.name.split()) in names]
    if len(matches) > 1:
        raise ClientError(
            f"{path} has more than one [{names[0]}] section, which the AWS tools refuse.",
            hint="Remove the duplicate by hand, then run the command again.",
        )
    return matches[0] if matches else None


def set_section(
    text: str,
    names: tuple[str, ...],
    values: Mapping[str, str],
    *,
    owned: tuple[str, ...],
    force: bool,
    path: Path,
) -> str:
    """Return `text` with section `names[0]` holding `values`; nothing else changes.

    Keys in `owned` or `values` are removed from the section (with their continuation lines)
    and `values` are written where the first of them was, else right after the header. A new
    section is appended at the end. NotOurs when the section exists, lacks the broker's marker
    and `force` is False.
    """
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += newline
    new_lines = [f"{key} = {value}{newline}" for key, value in values.items()]
    section = find_section(lines, names, path)
    if section is None:
        if lines and lines[-1].strip():
            lines.append(newline)
        return "".join([*lines, f"[{names[0]}]{newline}", *new_lines])
    if not force and not is_managed(section_options(lines, section)):
        raise NotOurs(
            f"Profile [{names[0]}] in {path} was not written by the broker, so it was left as is.",
            hint="Pick another --profile, or pass --force to replace its keys.",
        )
    drop = {k.lower() for k in (*owned, *values)}
    body: list[str] = []
    insert_at: int | None = None
    dropping = False
    for line in lines[section.header + 1 : section.end]:
        key = option_name(line)
        if key is not None:
            dropping = key in drop
            if dropping and insert_at is None:
                insert_at = len(body)
        elif dropping and line[:1].isspace() and line.strip():
            continue  # a continuation line of a dropped key
        else:
            dropping = False
        if not dropping:
            body.append(line)
    position = insert_at if insert_at is not None else 0
    body[position:position] = new_lines
    return "".join([*lines[: section.header + 1], *body, *lines[section.end :]])


def read_section(path: Path, names: tuple[str, ...]) -> dict[str, str] | None:
    """The options of section `names` in `path`, or None when the file or section is absent."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    lines = text.splitlines(keepends=True)
    section = find_section(lines, names, path)
    return section_options(lines, section) if section else None


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` (a sidecar: the file itself gets replaced)."""
    with file_lock(path.with_name(path.name + ".lock")):
        yield


def update_file(path: Path, edit: Callable[[str], str]) -> Path:
    """Read, edit and atomically rewrite `path` under its lock; return the real path written."""
    real = Path(os.path.realpath(path))
    with locked(real):
        try:
            with open(real, encoding="utf-8", newline="") as handle:
                text = handle.read()
        except FileNotFoundError:
            text = ""
        except UnicodeDecodeError as exc:
            raise ClientError(
                f"{path} is not UTF-8 text, so the broker will not edit it.",
                hint="Fix the file's encoding, or point AWS_SHARED_CREDENTIALS_FILE elsewhere.",
            ) from exc
        write_private(real, edit(text))
    return real


def credentials_section(profile: str) -> tuple[str, ...]:
    """How profile `profile` is named in the credentials file."""
    return (profile,)


def config_section(profile: str) -> tuple[str, ...]:
    """How profile `profile` is named in the config file (`[default]` or `[profile P]`)."""
    return ("default", "profile default") if profile == "default" else (f"profile {profile}",)
