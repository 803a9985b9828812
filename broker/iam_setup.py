"""`broker iam-policies`: the IAM policies the broker and its target roles need.

Prints two documents for a set of target roles (from the policy directory, or ``--role``):

1. the broker's own identity policy: assume the target roles with a source identity and session
   tags, read them (``GetRole`` for MaxSessionDuration, the inline policies to budget the
   revocation policy), and write or delete the revocation policy on them;
2. the trust policy each target role needs so the broker may assume it, set the source identity
   (required: every broker session carries the person's identity) and tag the session.

IAM has no condition key naming an inline policy, so ``iam:PutRolePolicy`` and
``iam:DeleteRolePolicy`` cannot be limited to ``BrokerRevocations`` by IAM itself: they are
limited to the target roles' ARNs, and the broker only ever writes that one name (see
docs/deploy.md for a detective control).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from broker.aws import parse_role_arn
from broker.revocation import POLICY_NAME


def broker_policy(role_arns: Iterable[str]) -> dict[str, Any]:
    """The identity policy for the broker's own principal."""
    roles = sorted(set(role_arns))
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AssumeTargetRoles",
                "Effect": "Allow",
                "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"],
                "Resource": roles,
            },
            {
                "Sid": "ReadTargetRoles",
                "Effect": "Allow",
                "Action": ["iam:GetRole", "iam:ListRolePolicies", "iam:GetRolePolicy"],
                "Resource": roles,
            },
            {
                "Sid": "WriteRevocationPolicy",
                "Effect": "Allow",
                "Action": ["iam:PutRolePolicy", "iam:DeleteRolePolicy"],
                "Resource": roles,
            },
        ],
    }


def trust_policy(broker_principal: str) -> dict[str, Any]:
    """The trust policy a target role needs for the broker (source identity required)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "BrokerAssumeWithSourceIdentity",
                "Effect": "Allow",
                "Principal": {"AWS": broker_principal},
                "Action": "sts:AssumeRole",
                "Condition": {"StringLike": {"sts:SourceIdentity": "*"}},
            },
            {
                "Sid": "BrokerSetsIdentityAndTags",
                "Effect": "Allow",
                "Principal": {"AWS": broker_principal},
                "Action": ["sts:SetSourceIdentity", "sts:TagSession"],
            },
        ],
    }


def roles_in_policy_dir(directory: str | Path) -> list[str]:
    """Every role ARN an entitlement in the policy directory names."""
    from broker.policy import load_policy_dir

    loaded = load_policy_dir(directory)
    return sorted({str(e.role_arn) for e in loaded.policy.entitlements})


@click.command("iam-policies")
@click.option(
    "--broker-principal",
    default="arn:aws:iam::<ACCOUNT>:role/<broker-role>",
    show_default=True,
    help="ARN of the role or user the broker runs as (put in the trust policy).",
)
@click.option(
    "--policy-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Take the target roles from this policy directory (default: BROKER_POLICY_DIR).",
)
@click.option("--role", "roles", multiple=True, help="A target role ARN (repeatable).")
def iam_policies_command(
    broker_principal: str, policy_dir: Path | None, roles: tuple[str, ...]
) -> None:
    """Print the broker's IAM policy and the target roles' trust policy."""
    arns = list(roles)
    if not arns:
        directory = policy_dir or Path(_config_policy_dir())
        try:
            arns = roles_in_policy_dir(directory)
        except Exception as exc:  # noqa: BLE001 - shown to the person running the command
            raise click.ClickException(f"could not read the policy in {directory}: {exc}") from exc
    for arn in arns:
        try:
            parse_role_arn(arn)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
    if not arns:
        raise click.ClickException("no target roles: pass --role ARN or --policy-dir DIR")
    click.echo(f"# Identity policy for the broker ({broker_principal}):")
    click.echo(json.dumps(broker_policy(arns), indent=2))
    click.echo()
    click.echo(
        f"# Trust policy for each target role ({len(arns)}), so the broker may assume it with a "
        "source identity and session tags:"
    )
    for arn in sorted(set(arns)):
        click.echo(f"#   {arn}")
    click.echo(json.dumps(trust_policy(broker_principal), indent=2))
    click.echo()
    click.echo(
        f"# The broker writes only the inline policy {POLICY_NAME!r} on these roles; IAM cannot "
        "restrict PutRolePolicy to a policy name (see docs/deploy.md)."
    )


def _config_policy_dir() -> str:
    from flask import current_app

    try:
        return str(current_app.config["POLICY_DIR"])
    except RuntimeError:
        return "policies"
