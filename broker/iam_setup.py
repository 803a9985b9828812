"""What IAM must hold for the broker: its own policy, each target role's trust and session limit.

Two documents and one number per role, shared by `broker iam-policies` (which prints or writes
them) and `broker doctor` (which checks an account against them):

1. the broker's own identity policy: assume the target roles with a source identity and session
   tags, read them (``GetRole`` for MaxSessionDuration, the inline policies to budget the
   revocation policy), write or delete the revocation policy on them, and simulate its own
   policy (so `broker doctor` can check the write permission without writing);
2. the trust policy statements each target role needs so the broker may assume it, set the
   source identity (required: every broker session carries the person's identity) and tag the
   session;
3. each role's ``MaxSessionDuration``, which must cover the longest ``max_duration`` of the
   entitlements that use it (the broker never asks for more than the role allows, so a shorter
   one silently shortens every session).

IAM has no condition key naming an inline policy, so ``iam:PutRolePolicy`` and
``iam:DeleteRolePolicy`` cannot be limited to ``BrokerRevocations`` by IAM itself: they are
limited to the target roles' ARNs, and the broker only ever writes that one name (see
docs/deploy.md for a detective control).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from broker.aws import RoleArn, parse_role_arn
from broker.errors import BrokerError
from broker.policy import PolicySet, format_duration, load_policy_dir

TRUST_ACTIONS = ("sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession")
"""What a target role's trust policy must let the broker do."""
ROLE_READ_ACTIONS = ("iam:GetRole", "iam:ListRolePolicies", "iam:GetRolePolicy")
ROLE_WRITE_ACTIONS = ("iam:PutRolePolicy", "iam:DeleteRolePolicy")
PLACEHOLDER_PRINCIPAL = "arn:aws:iam::<ACCOUNT>:role/<broker-role>"
MIN_ROLE_SESSION = 3_600
"""IAM's smallest (and default) MaxSessionDuration."""


def broker_policy(role_arns: Iterable[str], broker_principal: str | None = None) -> dict[str, Any]:
    """The identity policy for the broker's own principal."""
    roles = sorted(set(role_arns))
    statements: list[dict[str, Any]] = [
        {
            "Sid": "AssumeTargetRoles",
            "Effect": "Allow",
            "Action": list(TRUST_ACTIONS),
            "Resource": roles,
        },
        {
            "Sid": "ReadTargetRoles",
            "Effect": "Allow",
            "Action": list(ROLE_READ_ACTIONS),
            "Resource": roles,
        },
        {
            "Sid": "WriteRevocationPolicy",
            "Effect": "Allow",
            "Action": list(ROLE_WRITE_ACTIONS),
            "Resource": roles,
        },
    ]
    if broker_principal:
        # Read-only, on itself: lets `broker doctor` ask IAM whether the writes above are
        # allowed (SCPs and permission boundaries included) without writing anything.
        statements.append(
            {
                "Sid": "DoctorSimulatesOwnPolicy",
                "Effect": "Allow",
                "Action": "iam:SimulatePrincipalPolicy",
                "Resource": broker_principal,
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def trust_policy(broker_principal: str) -> dict[str, Any]:
    """The trust policy statements a target role needs for the broker (source identity required).

    `broker doctor` checks a role's trust policy for exactly these permissions and shows this
    document as the fix.
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "BrokerAssumeWithSourceIdentity",
                "Effect": "Allow",
                "Principal": {"AWS": broker_principal},
                "Action": TRUST_ACTIONS[0],
                "Condition": {"StringLike": {"sts:SourceIdentity": "*"}},
            },
            {
                "Sid": "BrokerSetsIdentityAndTags",
                "Effect": "Allow",
                "Principal": {"AWS": broker_principal},
                "Action": list(TRUST_ACTIONS[1:]),
            },
        ],
    }


@dataclass(frozen=True)
class TargetRole:
    """A role the policy names, with the entitlements (id, max_duration) that use it."""

    arn: str
    entitlements: tuple[tuple[str, timedelta], ...] = ()

    @property
    def parts(self) -> RoleArn:
        """Account, path and name."""
        return parse_role_arn(self.arn)

    @property
    def min_session_seconds(self) -> int:
        """The MaxSessionDuration the role needs: its entitlements' longest max_duration."""
        longest = max((int(d.total_seconds()) for _, d in self.entitlements), default=0)
        return max(longest, MIN_ROLE_SESSION)

    @property
    def trust_file(self) -> str:
        """File name of its trust statements in `broker iam-policies --output-dir`."""
        parts = self.parts
        return f"trust-{parts.account}-{parts.name}.json"

    def describe_durations(self) -> str:
        """``prod-read 1h, prod-admin 4h``: which entitlements ask for how long."""
        return ", ".join(f"{eid} {format_duration(d)}" for eid, d in self.entitlements)


def target_roles(policy: PolicySet) -> list[TargetRole]:
    """Every role the policy's entitlements name, sorted by ARN."""
    found: dict[str, list[tuple[str, timedelta]]] = {}
    for entitlement in policy.entitlements:
        found.setdefault(str(entitlement.role_arn), []).append(
            (entitlement.id, entitlement.max_duration)
        )
    return [TargetRole(arn, tuple(found[arn])) for arn in sorted(found)]


def roles_in_policy_dir(directory: str | Path) -> list[str]:
    """Every role ARN an entitlement in the policy directory names."""
    return [role.arn for role in target_roles(load_policy_dir(directory).policy)]


@click.command("iam-policies")
@click.option(
    "--broker-principal",
    default=PLACEHOLDER_PRINCIPAL,
    show_default=True,
    help="ARN of the role or user the broker runs as (`broker doctor` prints it).",
)
@click.option(
    "--policy-dir",
    "--dir",
    "policy_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Take the target roles from this policy directory (default: the configured "
    "BROKER_POLICY_DIR).",
)
@click.option("--role", "roles", multiple=True, help="A target role ARN (repeatable).")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json", "terraform"]),
    default="text",
    show_default=True,
    help="text: for people; json: one JSON document; terraform: broker.tf (with --output-dir "
    "every format is written).",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write broker-policy.json, one trust-ACCOUNT-NAME.json per role, roles.json and "
    "broker.tf into this directory.",
)
@click.pass_context
def iam_policies_command(
    ctx: click.Context,
    broker_principal: str,
    policy_dir: Path | None,
    roles: tuple[str, ...],
    output_format: str,
    output_dir: Path | None,
) -> None:
    """Print or write the broker's IAM policy and what each target role needs."""
    from broker import iam_files

    targets = _targets(ctx, policy_dir, roles)
    if output_dir is not None:
        if broker_principal == PLACEHOLDER_PRINCIPAL:
            click.echo(
                "warning: no --broker-principal given; the files name the placeholder "
                f"{PLACEHOLDER_PRINCIPAL} (`broker doctor` prints the broker's ARN)",
                err=True,
            )
        written = iam_files.write_files(output_dir, broker_principal, targets)
        for path in written:
            click.echo(str(path))
        return
    if output_format == "json":
        click.echo(iam_files.json_bundle(broker_principal, targets))
    elif output_format == "terraform":
        click.echo(iam_files.terraform(targets), nl=False)
    else:
        click.echo(iam_files.text(broker_principal, targets), nl=False)


def _targets(
    ctx: click.Context, policy_dir: Path | None, roles: tuple[str, ...]
) -> list[TargetRole]:
    if roles:
        targets = [TargetRole(arn) for arn in sorted(set(roles))]
    else:
        directory = policy_dir or configured_policy_dir(ctx)
        try:
            targets = target_roles(load_policy_dir(directory).policy)
        except Exception as exc:  # shown to the person running the command
            raise click.ClickException(f"could not read the policy in {directory}: {exc}") from exc
    for target in targets:
        try:
            target.parts  # noqa: B018 - validates the ARN
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
    if not targets:
        raise click.ClickException("no target roles: pass --role ARN or --policy-dir DIR")
    return targets


def configured_policy_dir(ctx: click.Context) -> Path:
    """BROKER_POLICY_DIR as the server reads it (the same configuration sources)."""
    from broker.cli.app import server_app

    try:
        app = server_app(ctx)
    except (click.ClickException, BrokerError) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else exc.explain()
        raise click.ClickException(
            f"{message}\n(reading the server's configuration for BROKER_POLICY_DIR; fix it, or "
            "pass --policy-dir DIR or --role ARN)"
        ) from exc
    return Path(app.config["POLICY_DIR"])
