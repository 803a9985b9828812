"""`broker iam-policies`: one JSON document, or files an operator applies, that `doctor` accepts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import hcl2
import pytest
from click.testing import CliRunner, Result
from doctorbed import ACCOUNT, new_broker_user, unique
from schedbed import needs_iamsim

from broker.cli import build
from broker.doctor.aws import check_identity, check_role
from broker.iam_setup import (
    PLACEHOLDER_PRINCIPAL,
    TargetRole,
    broker_policy,
    iam_policies_command,
    trust_policy,
)

PRINCIPAL = "arn:aws:iam::111122223333:role/broker"


def write_policy(directory: Path, entitlements: list[tuple[str, str, str]]) -> Path:
    """A policy directory with (id, role ARN, max_duration) entitlements."""
    directory.mkdir(parents=True)
    body = "".join(
        f"  - id: {eid}\n    role_arn: {arn}\n    allow: {{groups: [sre]}}\n"
        f"    max_duration: {duration}\n"
        for eid, arn, duration in entitlements
    )
    (directory / "policy.yaml").write_text(
        f"version: 1\npeople: []\ndeny: []\nentitlements:\n{body}"
    )
    return directory


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return write_policy(
        tmp_path / "policies",
        [
            ("read", "arn:aws:iam::111122223333:role/app", "1h"),
            ("admin", "arn:aws:iam::111122223333:role/app", "4h"),
            ("logs", "arn:aws:iam::111122223333:role/support/logs", "30m"),
        ],
    )


def invoke(*args: str) -> Result:
    return CliRunner().invoke(iam_policies_command, list(args), catch_exceptions=False)


def test_json_format_is_one_document_with_every_role_and_its_session_length(
    policy_dir: Path,
) -> None:
    result = invoke(
        "--policy-dir", str(policy_dir), "--broker-principal", PRINCIPAL, "--format", "json"
    )

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    app, logs = "arn:aws:iam::111122223333:role/app", "arn:aws:iam::111122223333:role/support/logs"
    assert document["broker_policy"] == broker_policy([app, logs], PRINCIPAL)
    assert document["revocation_policy_name"] == "BrokerRevocations"
    roles = {r["role_arn"]: r for r in document["roles"]}
    assert roles[app]["max_session_duration"] == 14400  # the 4h entitlement
    assert roles[app]["entitlements"] == [
        {"id": "read", "max_duration": "1h"},
        {"id": "admin", "max_duration": "4h"},
    ]
    assert roles[logs]["max_session_duration"] == 3600  # IAM's minimum covers 30m
    assert (roles[logs]["name"], roles[logs]["path"]) == ("logs", "/support/")
    assert all(r["trust_policy"] == trust_policy(PRINCIPAL) for r in document["roles"])


def test_text_format_says_what_each_role_needs(policy_dir: Path) -> None:
    result = invoke("--dir", str(policy_dir), "--broker-principal", PRINCIPAL)

    assert result.exit_code == 0, result.output
    assert (
        "#   arn:aws:iam::111122223333:role/app: MaxSessionDuration >= 14400 (read 1h, admin 4h)"
        in result.output
    )
    assert "iam:SimulatePrincipalPolicy" in result.output


def test_output_dir_writes_json_files_and_terraform_for_every_role(
    policy_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "iam"

    result = invoke(
        "--policy-dir", str(policy_dir), "--broker-principal", PRINCIPAL, "--output-dir", str(out)
    )

    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "broker-policy.json",
        "broker.tf",
        "roles.json",
        "trust-111122223333-app.json",
        "trust-111122223333-logs.json",
    ]
    assert sorted(Path(line).name for line in result.stdout.splitlines()) == names
    for path in out.glob("*.json"):
        json.loads(path.read_text())  # every JSON file is valid on its own
    assert json.loads((out / "trust-111122223333-app.json").read_text()) == trust_policy(PRINCIPAL)
    roles = json.loads((out / "roles.json").read_text())
    assert [(r["name"], r["max_session_duration"], r["trust_policy_file"]) for r in roles] == [
        ("app", 14400, "trust-111122223333-app.json"),
        ("logs", 3600, "trust-111122223333-logs.json"),
    ]
    terraform = (out / "broker.tf").read_text()
    assert 'resource "aws_iam_policy" "broker"' in terraform
    assert 'file("${path.module}/broker-policy.json")' in terraform
    for role in roles:
        assert f'"{role["role_arn"]}" = {{' in terraform
        assert f'file("${{path.module}}/{role["trust_policy_file"]}")' in terraform
    assert re.search(r"max_session_duration = 14400 # read 1h, admin 4h\n", terraform)
    assert re.search(r'path += "/support/"', terraform)


def test_output_dir_without_a_principal_warns_that_the_files_hold_a_placeholder(
    policy_dir: Path, tmp_path: Path
) -> None:
    result = invoke("--policy-dir", str(policy_dir), "--output-dir", str(tmp_path / "iam"))

    assert result.exit_code == 0
    assert "warning: no --broker-principal given" in result.stderr
    trust = json.loads((tmp_path / "iam" / "trust-111122223333-app.json").read_text())
    assert trust == trust_policy(PLACEHOLDER_PRINCIPAL)


def test_the_policy_directory_defaults_to_the_configured_one(
    policy_dir: Path, tmp_path: Path
) -> None:
    env = {
        "BROKER_ENV": "testing",
        "BROKER_POLICY_DIR": str(policy_dir),
        "BROKER_DATABASE_URL": f"sqlite:///{tmp_path / 'broker.db'}",
    }

    result = CliRunner().invoke(build(), ["iam-policies", "--format", "json"], env=env)

    assert result.exit_code == 0, result.output
    arns = [r["role_arn"] for r in json.loads(result.stdout)["roles"]]
    assert arns == [
        "arn:aws:iam::111122223333:role/app",
        "arn:aws:iam::111122223333:role/support/logs",
    ]  # not the example company's roles in ./policies
    bad = CliRunner().invoke(build(), ["iam-policies"], env=dict(env, BROKER_ENV="nonsense"))
    assert bad.exit_code == 1
    assert "BROKER_ENV" in bad.output and "--policy-dir DIR" in bad.output


@needs_iamsim
def test_the_written_files_applied_to_aws_pass_doctor(tmp_path: Path, moto_server: Any) -> None:
    broker = new_broker_user(moto_server)
    first, second = unique("app"), unique("logs")
    policy_dir = write_policy(
        tmp_path / "policies",
        [
            ("read", f"arn:aws:iam::{ACCOUNT}:role/{first}", "2h"),
            ("logs", f"arn:aws:iam::{ACCOUNT}:role/ops/{second}", "1h"),
        ],
    )
    out = tmp_path / "iam"
    result = invoke(
        "--policy-dir", str(policy_dir), "--broker-principal", broker.arn, "--output-dir", str(out)
    )
    assert result.exit_code == 0, result.output

    # What an operator does with the files: the broker's policy, then each role as roles.json says.
    iam = moto_server.client("iam")
    broker.allow(json.loads((out / "broker-policy.json").read_text()))
    targets = []
    for role in json.loads((out / "roles.json").read_text()):
        iam.create_role(
            RoleName=role["name"],
            Path=role["path"],
            MaxSessionDuration=role["max_session_duration"],
            AssumeRolePolicyDocument=(out / role["trust_policy_file"]).read_text(),
        )
        durations = tuple(
            (e["id"], timedelta(hours=int(e["max_duration"][:-1]))) for e in role["entitlements"]
        )
        targets.append(TargetRole(role["role_arn"], durations))

    principal, _ = check_identity(broker.sts, broker.iam)
    assert principal is not None
    for target in targets:
        checks = check_role(broker.iam, principal, target)
        assert [(c.check, c.status) for c in checks] == [
            ("role", "ok"),
            ("trust policy", "ok"),
            ("max session duration", "ok"),
            ("revocation policy", "ok"),
        ], checks


def test_terraform_file_parses_as_hcl_with_every_role(policy_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "iam"
    invoke(
        "--policy-dir", str(policy_dir), "--broker-principal", PRINCIPAL, "--output-dir", str(out)
    )
    parsed = hcl2.loads((out / "broker.tf").read_text())  # a syntax error raises here
    [roles] = [block["broker_target_roles"] for block in parsed["locals"]]
    by_arn = {arn.strip('"'): role for arn, role in roles.items() if not arn.startswith("__")}
    assert set(by_arn) == {
        "arn:aws:iam::111122223333:role/app",
        "arn:aws:iam::111122223333:role/support/logs",
    }
    assert by_arn["arn:aws:iam::111122223333:role/app"]["max_session_duration"] == 14400
    assert by_arn["arn:aws:iam::111122223333:role/support/logs"]["max_session_duration"] == 3600


# Needs the `terraform` binary; no package registry this project installs from carries it, so
# the test runs where the machine has it (this one does) and the HCL test above runs everywhere.
@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed")
def test_terraform_file_is_formatted_and_its_role_map_evaluates(
    policy_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "iam"
    invoke(
        "--policy-dir", str(policy_dir), "--broker-principal", PRINCIPAL, "--output-dir", str(out)
    )
    tf = shutil.which("terraform")
    assert tf is not None
    env = {"TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", "HOME": str(tmp_path)}
    fmt = subprocess.run(
        [tf, "fmt", "-check", "-diff", "broker.tf"], cwd=out, capture_output=True, env=env
    )
    assert fmt.returncode == 0, fmt.stdout.decode() + fmt.stderr.decode()

    # The AWS provider cannot be downloaded here: evaluate everything but the policy resource.
    module = tmp_path / "module"
    shutil.copytree(out, module)
    text = (module / "broker.tf").read_text()
    text = re.sub(r'resource "aws_iam_policy" "broker" \{.*?\n\}\n', "", text, flags=re.S)
    text = re.sub(r'output "broker_policy_arn" \{.*?\n\}\n', "", text, flags=re.S)
    (module / "broker.tf").write_text(text)
    init = subprocess.run([tf, "init", "-input=false"], cwd=module, capture_output=True, env=env)
    assert init.returncode == 0, init.stdout.decode() + init.stderr.decode()
    expression = (
        "jsonencode({for arn, r in local.broker_target_roles : arn => "
        "[r.name, r.path, r.max_session_duration, jsondecode(r.trust_policy)]})"
    )
    console = subprocess.run(
        [tf, "console"], cwd=module, input=expression.encode(), capture_output=True, env=env
    )
    assert console.returncode == 0, console.stderr.decode()
    evaluated = json.loads(json.loads(console.stdout.decode().strip()))
    assert evaluated == {
        "arn:aws:iam::111122223333:role/app": ["app", "/", 14400, trust_policy(PRINCIPAL)],
        "arn:aws:iam::111122223333:role/support/logs": [
            "logs",
            "/support/",
            3600,
            trust_policy(PRINCIPAL),
        ],
    }
