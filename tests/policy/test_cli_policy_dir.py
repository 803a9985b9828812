"""Policy commands read the policy the server reads: BROKER_POLICY_DIR, one option name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from broker.cli.policy import policy

EXAMPLE_POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture
def deployed(tmp_path: Path) -> Path:
    """A deployed policy that differs from the checkout's example (one entitlement less)."""
    target = tmp_path / "deployed"
    shutil.copytree(EXAMPLE_POLICIES, target)
    text = (target / "entitlements.yaml").read_text()
    start = text.index("  - id: dev-poweruser") if "  - id: dev-poweruser" in text else None
    assert start is not None, "the example policy changed; pick another entitlement to drop"
    end = text.find("\n  - id:", start + 1)
    (target / "entitlements.yaml").write_text(text[:start] + (text[end + 1 :] if end > 0 else ""))
    shutil.rmtree(target / "tests")  # the example's decision tests name the dropped entitlement
    (target / "tests").mkdir()
    (target / "tests" / "gone.yaml").write_text(
        "- name: the deployed policy has no dev-poweruser\n"
        "  who: {email: sam@example.com, groups: [sre], amr: [pwd, mfa]}\n"
        "  entitlement: dev-poweruser\n"
        "  at: 2026-11-01T12:00:00Z\n"
        "  expect: deny\n"
    )
    return target


def test_check_explain_and_test_use_broker_policy_dir(
    deployed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_POLICY_DIR", str(deployed))
    runner = CliRunner()
    checked = runner.invoke(policy, ["check"])
    assert checked.exit_code == 0, checked.output
    assert str(deployed) in checked.stdout and "OK: 6 entitlements" in checked.stdout
    explained = runner.invoke(policy, ["explain", "--email", "sam@example.com"])
    assert explained.exit_code == 0, explained.output
    assert "dev-poweruser" not in explained.stdout  # not the checkout's ./policies
    assert f"policy: {deployed}" in explained.stderr
    tested = runner.invoke(policy, ["test"])
    assert tested.exit_code == 0, tested.output


def test_policy_dir_option_has_one_name_everywhere(deployed: Path) -> None:
    runner = CliRunner()
    for name in ("--policy-dir", "--dir"):
        for command in (["check"], ["test"], ["explain", "--email", "a@example.com"]):
            result = runner.invoke(policy, [*command, name, str(deployed)])
            assert result.exit_code == 0, (command, name, result.output)


def test_instance_file_names_the_policy_dir(
    deployed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BROKER_POLICY_DIR", raising=False)
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "broker.toml").write_text(f'policy_dir = "{deployed}"\n')
    monkeypatch.setenv("BROKER_INSTANCE_PATH", str(instance))
    checked = CliRunner().invoke(policy, ["check"])
    assert checked.exit_code == 0 and str(deployed) in checked.stdout, checked.output
