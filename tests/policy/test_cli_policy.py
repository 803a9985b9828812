from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from broker.cli.policy import policy

EXAMPLE_POLICIES = Path(__file__).resolve().parents[2] / "policies"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(policy, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_check_accepts_the_example_policies() -> None:
    code, out, err = run("check", str(EXAMPLE_POLICIES))
    assert (code, err) == (0, "")
    assert "OK: 7 entitlements" in out


def test_check_rejects_a_bad_directory_with_path_and_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "version: 1\n"
        "entitlements:\n"
        "  - id: prod-readonly\n"
        "    role_arn: arn:aws:iam::111122223333:role/prod-readonly\n"
        "    allow: {groups: [sre]}\n"
        "    max_duration: 13h\n"
        "people: []\n"
        "deny: []\n"
    )
    code, out, err = run("check", str(tmp_path))
    assert code == 1
    assert out == ""
    assert f"{tmp_path / 'bad.yaml'}:6: entitlements[0].max_duration: 13h is longer" in err
    assert err.rstrip().endswith("1 error; not loaded")


def test_check_prints_warnings_but_passes(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "version: 1\n"
        "entitlements:\n"
        "  - {id: dev, role_arn: 'arn:aws:iam::111122223333:role/dev', allow: {everyone: true}}\n"
        "deny:\n"
        "  - {match: {kinds: [contractor]}, entitlements: [prod-*]}\n"
        "people: []\n"
    )
    code, _, err = run("check", str(tmp_path))
    assert code == 0
    assert f"{tmp_path / 'p.yaml'}:5: warning: deny pattern 'prod-*' matches no entitlement" in err


def test_explain_gives_each_decision_and_the_rule_behind_it() -> None:
    code, out, _ = run(
        "explain",
        "--dir",
        str(EXAMPLE_POLICIES),
        "--email",
        "dana@contractor.example",
        "--groups",
        "sre,developers",
        "--amr",
        "pwd,mfa",
        "--at",
        "2026-11-01T12:00:00",
    )
    assert code == 0
    assert "dana@contractor.example is contractor; groups: developers, sre" in out
    assert "engagement ends 2026-12-31 23:59 UTC (sponsor lead@example.com)" in out
    assert (
        "prod-readonly: DENY\n"
        "  - denied by deny rule (deny.yaml:4): Contractors never get production access"
    ) in out
    assert "contractor-sandbox: ALLOW (sessions up to 2h, grant lasts up to 8h)" in out


def test_explain_one_entitlement_with_network_and_claims() -> None:
    code, out, _ = run(
        "explain",
        "--dir",
        str(EXAMPLE_POLICIES),
        "--email",
        "sue@example.com",
        "--groups",
        "support",
        "--amr",
        "mfa",
        "--claim",
        "department=support",
        "--source-ip",
        "192.0.2.1",
        "--entitlement",
        "prod-support",
    )
    assert code == 0
    decisions = out.split("\n\n", 1)[1]
    assert decisions.startswith("prod-support: DENY\n  - prod-support may only be used from")
    assert "dev-readonly" not in decisions


def test_test_command_passes_on_the_example_policies() -> None:
    code, out, _ = run("test", str(EXAMPLE_POLICIES))
    assert code == 0, out
    assert "FAIL" not in out
    assert out.rstrip().splitlines()[-1].endswith(" passed, 0 failed")


def test_test_command_fails_and_says_why_when_a_case_is_wrong(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(EXAMPLE_POLICIES, directory)
    (directory / "tests" / "wrong.yaml").write_text(
        "- name: contractors reach production (they must not)\n"
        "  who: {email: dana@contractor.example, groups: [sre], amr: [mfa]}\n"
        "  entitlement: prod-readonly\n"
        "  at: 2026-11-01T12:00:00Z\n"
        "  expect: allow\n"
    )
    code, out, _ = run("test", str(directory))
    assert code == 1
    assert (
        f"FAIL  {directory / 'tests' / 'wrong.yaml'}:1  "
        "contractors reach production (they must not)\n"
        "      expected allow, got deny: denied by deny rule (deny.yaml:4): Contractors never get "
        "production access"
    ) in out
    assert out.rstrip().endswith(" passed, 1 failed")


def test_test_command_checks_reason_contains(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(EXAMPLE_POLICIES, directory)
    shutil.rmtree(directory / "tests")
    (directory / "tests").mkdir()
    (directory / "tests" / "reason.yaml").write_text(
        "- name: denied, but for the reason we expect?\n"
        "  who: {email: devi@example.com, groups: [developers], amr: [pwd]}\n"
        "  entitlement: prod-readonly\n"
        "  expect: deny\n"
        "  reason_contains: network\n"
    )
    code, out, _ = run("test", str(directory))
    assert code == 1
    assert "verdict deny as expected, but the reasons do not contain 'network'" in out


def test_test_command_reports_malformed_cases_with_line(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(EXAMPLE_POLICIES, directory)
    (directory / "tests" / "typo.yaml").write_text(
        "- name: typo\n  who: {email: a@example.com}\n  entitlement: x\n  expect: alow\n"
    )
    code, _, err = run("test", str(directory))
    assert code == 1
    assert f"{directory / 'tests' / 'typo.yaml'}:4: [0].expect: Input should be" in err


def test_test_command_without_tests_fails(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(EXAMPLE_POLICIES, directory, ignore=shutil.ignore_patterns("tests"))
    code, _, err = run("test", str(directory))
    assert code == 1
    assert "no decision tests" in err


def test_schema_is_json_schema_of_the_file_format() -> None:
    code, out, _ = run("schema")
    assert code == 0
    schema = json.loads(out)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"version", "people", "entitlements", "deny", "auditors", "admins"} <= set(
        schema["properties"]
    )
    assert schema["additionalProperties"] is False


def test_example_policy_files_validate_against_the_published_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    _, out, _ = run("schema")
    schema = json.loads(out)
    for path in sorted(EXAMPLE_POLICIES.glob("*.yaml")):
        # YAML dates arrive as date objects; an editor sees them as the strings they are.
        data = json.loads(json.dumps(yaml.safe_load(path.read_text()), default=str))
        jsonschema.validate(data, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"version": 1, "entitlements": [{"id": "x"}]}, schema)
