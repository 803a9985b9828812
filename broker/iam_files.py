"""The IAM documents of `broker iam-policies` as files an operator applies: JSON and Terraform.

Every form is rendered from the same documents (:mod:`broker.iam_setup`), so the trust statements
written here are byte for byte what `broker doctor` shows as the fix and checks for. The
Terraform file reads the JSON files beside it instead of repeating them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from broker.iam_setup import TargetRole, broker_policy, trust_policy
from broker.policy import format_duration
from broker.revocation import POLICY_NAME

BROKER_POLICY_FILE = "broker-policy.json"
ROLES_FILE = "roles.json"
TERRAFORM_FILE = "broker.tf"


def role_entry(target: TargetRole) -> dict[str, Any]:
    """What one role needs, as data: name, path, MaxSessionDuration, entitlements, trust file."""
    parts = target.parts
    return {
        "role_arn": target.arn,
        "account": parts.account,
        "name": parts.name,
        "path": parts.path,
        "max_session_duration": target.min_session_seconds,
        "entitlements": [
            {"id": eid, "max_duration": format_duration(d)} for eid, d in target.entitlements
        ],
        "trust_policy_file": target.trust_file,
    }


def json_bundle(principal: str, targets: Sequence[TargetRole]) -> str:
    """Everything in one JSON document (for `--format json`)."""
    document = {
        "broker_principal": principal,
        "broker_policy": broker_policy([t.arn for t in targets], principal),
        "revocation_policy_name": POLICY_NAME,
        "roles": [dict(role_entry(t), trust_policy=trust_policy(principal)) for t in targets],
    }
    return _dumps(document)


def write_files(directory: Path, principal: str, targets: Sequence[TargetRole]) -> list[Path]:
    """Write the broker's policy, one trust file per role, roles.json and broker.tf; return them."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {
        BROKER_POLICY_FILE: _dumps(broker_policy([t.arn for t in targets], principal)),
    }
    for target in targets:
        files[target.trust_file] = _dumps(trust_policy(principal))
    files[ROLES_FILE] = _dumps([role_entry(t) for t in targets])
    files[TERRAFORM_FILE] = terraform(targets)
    written = []
    for name, content in files.items():
        path = directory / name
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def terraform(targets: Sequence[TargetRole]) -> str:
    """broker.tf: the broker's policy as a resource, each role's needs as data."""
    roles = "\n".join(_terraform_role(t) for t in targets)
    example = _hcl(targets[0].arn) if targets else '"<role arn>"'
    return _TERRAFORM.format(
        policy_file=_hcl("${path.module}/" + BROKER_POLICY_FILE, interpolate=True),
        revocation=POLICY_NAME,
        roles=roles,
        example=example,
    )


def text(principal: str, targets: Sequence[TargetRole]) -> str:
    """For people: each document under a comment saying where it goes."""
    lines = [
        f"# Identity policy for the broker ({principal}):",
        json.dumps(broker_policy([t.arn for t in targets], principal), indent=2),
        "",
        f"# Trust policy statements for each target role ({len(targets)}), so the broker may "
        "assume it with a source identity and session tags; and the MaxSessionDuration each "
        "role needs (its entitlements' longest max_duration):",
    ]
    for target in targets:
        needs = f"MaxSessionDuration >= {target.min_session_seconds}"
        why = f" ({target.describe_durations()})" if target.entitlements else ""
        lines.append(f"#   {target.arn}: {needs}{why}")
    lines += [
        json.dumps(trust_policy(principal), indent=2),
        "",
        f"# The broker writes only the inline policy {POLICY_NAME!r} on these roles; IAM cannot "
        "restrict PutRolePolicy to a policy name (see docs/deploy.md).",
        "# `--format json` prints all of this as one JSON document; `--output-dir DIR` writes "
        "files for `aws iam ... file://` and Terraform.",
    ]
    return "\n".join(lines) + "\n"


def _terraform_role(target: TargetRole) -> str:
    parts = target.parts
    why = target.describe_durations() or "no entitlement: IAM's minimum"
    trust = _hcl("${path.module}/" + target.trust_file, interpolate=True)
    return (
        f"    {_hcl(target.arn)} = {{\n"
        f"      name                 = {_hcl(parts.name)}\n"
        f"      path                 = {_hcl(parts.path)}\n"
        f"      max_session_duration = {target.min_session_seconds} # {why}\n"
        f"      trust_policy         = file({trust})\n"
        "    }"
    )


def _hcl(value: str, *, interpolate: bool = False) -> str:
    """A Terraform string literal; `${`/`%{` stay literal unless `interpolate`."""
    literal = json.dumps(value, ensure_ascii=False)
    if not interpolate:
        literal = literal.replace("${", "$${").replace("%{", "%%{")
    return literal


def _dumps(document: Any) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


_TERRAFORM = """\
# Generated by `broker iam-policies --output-dir`. The JSON files beside this one are the
# documents; `broker doctor` checks an account against exactly them. Regenerate when the
# policy's roles change.

# The broker's own permissions: assume the target roles with a source identity and session
# tags, read them, and write only the inline policy {revocation} on them.
resource "aws_iam_policy" "broker" {{
  name        = "broker"
  description = "broker: assume target roles; maintain {revocation} on them"
  policy      = file({policy_file})
}}

# Attach it to the role (or user) the broker runs as, for example:
#   resource "aws_iam_role_policy_attachment" "broker" {{
#     role       = "<broker-role>"
#     policy_arn = aws_iam_policy.broker.arn
#   }}

locals {{
  # Every target role of the policy: add the statements of trust_policy to the role's trust
  # policy, and keep its max_session_duration at least this (the longest max_duration of its
  # entitlements; a shorter one shortens every session).
  broker_target_roles = {{
{roles}
  }}
}}

# Where a target role is defined in Terraform, merge the broker's statements into its trust
# policy and cover the entitlements' durations, for example:
#   data "aws_iam_policy_document" "trust" {{
#     source_policy_documents = [local.broker_target_roles[{example}].trust_policy]
#     # ... the role's other trusted principals
#   }}
#   resource "aws_iam_role" "target" {{
#     name                 = local.broker_target_roles[{example}].name
#     path                 = local.broker_target_roles[{example}].path
#     max_session_duration = local.broker_target_roles[{example}].max_session_duration
#     assume_role_policy   = data.aws_iam_policy_document.trust.json
#   }}

output "broker_policy_arn" {{
  value = aws_iam_policy.broker.arn
}}

output "broker_target_roles" {{
  value = local.broker_target_roles
}}
"""
