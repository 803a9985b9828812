from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

EXAMPLE_POLICIES = Path(__file__).resolve().parents[2] / "policies"

WritePolicy = Callable[..., Path]


@pytest.fixture
def example_policies() -> Path:
    """The example policy set shipped in the repository's policies/ directory."""
    return EXAMPLE_POLICIES


NO_PEOPLE_OR_DENY_RULES = {
    "people.yaml": "version: 1\npeople: []\n",
    "deny.yaml": "version: 1\ndeny: []\n",
}
"""The files that say "no people rules, no deny rules" on purpose."""


@pytest.fixture
def write_policy(tmp_path: Path) -> WritePolicy:
    """Write dedented YAML files into a fresh policy directory and return the directory.

    people.yaml and deny.yaml are written empty (``people: []``, ``deny: []``) unless given.
    """
    directory = tmp_path / "policies"
    directory.mkdir()

    def write(**files: str) -> Path:
        for name, text in {**NO_PEOPLE_OR_DENY_RULES, **files}.items():
            (directory / name.replace("__", "/")).parent.mkdir(parents=True, exist_ok=True)
            (directory / name.replace("__", "/")).write_text(textwrap.dedent(text).lstrip())
        return directory

    return write
