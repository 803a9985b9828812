"""`broker policy ...`: check, explain, test and diff the policy files, and print their schema."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from broker.policy import (
    Identity,
    LoadedPolicy,
    PolicyLoadError,
    RequestContext,
    describe_decision,
    describe_person,
    load_cases,
    load_policy_dir,
    policy_json_schema,
    run_cases,
    tests_dir,
)
from broker.policy.diff import RENDERERS, diff_policies, load_directory
from broker.policy.diff.revisions import GitError, Side, git_sides, relabel

_DIR = click.Path(path_type=Path)


def configured_dir() -> Path:
    """The policy directory the server uses (BROKER_POLICY_DIR, instance file, default)."""
    from flask import Flask

    from broker.config import configured_policy_dir, instance_folder
    from broker.errors import BrokerError

    try:
        return Path(
            configured_policy_dir(Flask("broker", instance_path=instance_folder()).instance_path)
        )
    except BrokerError as exc:
        raise click.ClickException(exc.explain()) from exc


def _policy_dir_option(function: Any) -> Any:
    """`--policy-dir DIR` (alias `--dir`), the same name as in iam-policies and doctor."""
    return click.option(
        "--policy-dir",
        "--dir",
        "policy_dir",
        type=_DIR,
        default=None,
        help="Policy directory (default: BROKER_POLICY_DIR as the server reads it, else "
        "./policies).",
    )(function)


def _chosen(*candidates: Path | None) -> Path:
    """The first directory given, else the configured one."""
    for candidate in candidates:
        if candidate is not None:
            return candidate
    return configured_dir()


def _load(directory: Path) -> LoadedPolicy:
    """Load the policy or print every problem and exit 1."""
    try:
        loaded = load_policy_dir(directory)
    except PolicyLoadError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        count = len(exc.errors)
        click.echo(f"{directory}: {count} error{'s' if count != 1 else ''}; not loaded", err=True)
        raise click.exceptions.Exit(1) from None
    for warning in loaded.warnings:
        click.echo(str(warning), err=True)
    return loaded


def _split(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _claims(values: tuple[str, ...]) -> dict[str, object]:
    claims: dict[str, object] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not name=value", param_hint="--claim")
        previous = claims.get(name)
        if previous is None:
            claims[name] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            claims[name] = [previous, value]
    return claims


@click.group(name="policy")
def policy() -> None:
    """Check, explain, test and diff the access policy files."""


@policy.command()
@click.argument("directory", type=_DIR, required=False)
@_policy_dir_option
def check(directory: Path | None, policy_dir: Path | None) -> None:
    """Validate every policy file in DIRECTORY; exit 1 and list problems if any is invalid."""
    directory = _chosen(directory, policy_dir)
    loaded = _load(directory)
    policy_set = loaded.policy
    click.echo(
        f"{directory}: OK: {len(policy_set.entitlements)} entitlements, "
        f"{len(policy_set.deny)} deny rules, {len(policy_set.people)} people rules, "
        f"{len(loaded.warnings)} warnings; version {loaded.version_hash[:12]}"
    )


@policy.command()
@click.option("--email", required=True, help="The person's email address.")
@click.option("--groups", multiple=True, help="Groups, comma-separated (repeatable).")
@click.option("--claim", "claim_items", multiple=True, help="Extra claim as name=value.")
@click.option("--amr", multiple=True, help="Sign-in methods, e.g. pwd,mfa (repeatable).")
@click.option("--acr", help="Authentication context class the sign-in reached.")
@click.option("--source-ip", help="Address the request comes from.")
@click.option("--source-vpc", help="VPC the request comes from.")
@click.option("--entitlement", "entitlement_id", help="Explain only this entitlement.")
@click.option("--at", "at", type=click.DateTime(), help="Evaluate at this UTC time (default now).")
@_policy_dir_option
def explain(
    email: str,
    groups: tuple[str, ...],
    claim_items: tuple[str, ...],
    amr: tuple[str, ...],
    acr: str | None,
    source_ip: str | None,
    source_vpc: str | None,
    entitlement_id: str | None,
    at: datetime | None,
    policy_dir: Path | None,
) -> None:
    """Say what the policy decides for a person, and which rule decided it."""
    directory = _chosen(policy_dir)
    click.echo(f"policy: {directory}", err=True)
    evaluator = _load(directory).evaluator
    identity = Identity(
        issuer="cli",
        subject=email,
        email=email,
        groups=frozenset(_split(groups)),
        claims=_claims(claim_items),
        amr=tuple(_split(amr)),
        acr=acr,
    )
    now = at.replace(tzinfo=UTC) if at else datetime.now(UTC)
    ctx = RequestContext(now=now, source_ip=source_ip, source_vpc=source_vpc)
    person = evaluator.resolve(identity)
    for line in describe_person(evaluator, person, now):
        click.echo(line)
    click.echo("")
    if entitlement_id:
        decisions = [evaluator.decide(person, entitlement_id, ctx)]
    else:
        decisions = evaluator.decide_all(person, ctx)
    for decision in decisions:
        click.echo("\n".join(describe_decision(decision)))


@policy.command(name="test")
@click.argument("directory", type=_DIR, required=False)
@_policy_dir_option
@click.option("--verbose", "-v", is_flag=True, help="Show the reasons of passing cases too.")
def run_tests(directory: Path | None, policy_dir: Path | None, verbose: bool) -> None:
    """Run the decision tests in DIRECTORY/tests; exit 1 if any case fails."""
    directory = _chosen(directory, policy_dir)
    loaded = _load(directory)
    evaluator = loaded.evaluator
    try:
        cases = load_cases(tests_dir(directory))
    except PolicyLoadError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        raise click.exceptions.Exit(1) from None
    results = run_cases(evaluator, cases)
    for result in results:
        status = "PASS" if result.passed else "FAIL"
        click.echo(f"{status}  {result.where}  {result.case.name}")
        if result.problem:
            click.echo(f"      {result.problem}")
        elif verbose:
            click.echo(f"      {result.decision.verdict}: {'; '.join(result.decision.reasons)}")
    from broker.activity.cli import run_detection_tests  # tests/detections/*.yaml, if any

    outcomes = [r.passed for r in results] + run_detection_tests(loaded, directory, verbose)
    failed = outcomes.count(False)
    click.echo(f"{len(outcomes) - failed} passed, {failed} failed")
    if failed:
        raise click.exceptions.Exit(1)


@policy.command()
def schema() -> None:
    """Print the JSON Schema of a policy file (point your editor's YAML support at it)."""
    click.echo(json.dumps(policy_json_schema(), indent=2))


def _load_side(side: Side, *, warn: bool) -> LoadedPolicy | None:
    """Load one side of a diff, or print its problems (as `check` does) and return None."""
    try:
        loaded = load_policy_dir(side.directory)
    except PolicyLoadError as exc:
        for issue in relabel(exc.issues, side.directory, side.label):
            click.echo(str(issue), err=True)
        count = len(exc.errors)
        click.echo(
            f"{side.label}: {count} error{'s' if count != 1 else ''}; not loaded, so no diff",
            err=True,
        )
        return None
    for warning in relabel(loaded.warnings, side.directory, side.label) if warn else ():
        click.echo(str(warning), err=True)
    return loaded


@policy.command()
@click.argument("directories", nargs=-1, type=_DIR, metavar="[OLD NEW | DIR]")
@click.option(
    "--base",
    metavar="REV",
    help="Git revision of the old side (default: merge base of HEAD and main).",
)
@click.option(
    "--head", metavar="REV", help="Git revision of the new side (default: the files on disk)."
)
@click.option(
    "--directory",
    "--people",
    "people_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="People to state the diff for: YAML, JSON or CSV of email, groups, kind.",
)
@click.option(
    "--sensitive",
    "sensitive_globs",
    multiple=True,
    metavar="GLOB",
    help="Entitlement ids to treat as sensitive, besides those marked sensitive: true.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(sorted(RENDERERS)),
    default="text",
    show_default=True,
)
@click.option("--at", "at", type=click.DateTime(), help="Decide at this UTC time (default now).")
def diff(
    directories: tuple[Path, ...],
    base: str | None,
    head: str | None,
    people_file: Path | None,
    sensitive_globs: tuple[str, ...],
    output_format: str,
    at: datetime | None,
) -> None:
    """Show how access changes between two policies: who gains or loses what, and on what terms.

    \b
    broker policy diff OLD NEW   two policy directories
    broker policy diff [DIR]     DIR (default BROKER_POLICY_DIR) at --base against the files
                                 on disk (or against --head)

    Exit status: 0 when access does not widen on a sensitive entitlement, 3 when it does,
    1 on errors (a side that does not load is listed as `check` lists it), 2 on bad usage.
    """
    if len(directories) > 2:
        raise click.UsageError("give two policy directories, or one directory and --base")
    if len(directories) == 2 and (base or head):
        raise click.UsageError("--base and --head compare git revisions of one directory (DIR)")
    now = at.replace(tzinfo=UTC) if at else datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="policy-diff-") as scratch:
        if len(directories) == 2:
            old_side, new_side = (Side(d, str(d), str(d)) for d in directories)
        else:
            directory = directories[0] if directories else configured_dir()
            try:
                old_side, new_side = git_sides(directory, base, head, Path(scratch))
            except GitError as exc:
                raise click.ClickException(str(exc)) from None
        old, new = _load_side(old_side, warn=False), _load_side(new_side, warn=True)
    if old is None or new is None:
        raise click.exceptions.Exit(1)
    people = None
    if people_file is not None:
        try:
            people = load_directory(people_file)
        except PolicyLoadError as exc:
            for issue in exc.issues:
                click.echo(str(issue), err=True)
            raise click.exceptions.Exit(1) from None
    result = diff_policies(
        old.evaluator, new.evaluator, people=people, sensitive=sensitive_globs, now=now
    )
    compared = f"{old_side.description} with {new_side.description}"
    click.echo(RENDERERS[output_format](result, compared), nl=False)
    if result.exit_code:
        raise click.exceptions.Exit(result.exit_code)
