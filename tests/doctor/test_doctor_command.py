"""`broker doctor` as an operator runs it: the server's configuration, database, provider, AWS."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from aws import closed_port
from click.testing import CliRunner
from doctorbed import BrokerUser, create_target_role
from oidc_provider import OidcProvider, node_modules_present
from schedbed import needs_iamsim

from broker import create_app
from broker.cli import build
from broker.db import Database
from broker.doctor import Check, Report
from broker.doctor.cli import doctor_command
from broker.doctor.server import check_database, check_identity_provider
from broker.iam_setup import TargetRole
from broker.migrate import alembic_config, upgrade
from broker.services import EXTENSION, services


def write_policy(directory: Path, roles: list[TargetRole]) -> Path:
    """One policy file with an entitlement per (role, duration)."""
    directory.mkdir(parents=True, exist_ok=True)
    entitlements = "".join(
        textwrap.dedent(
            f"""\
              - id: {eid}
                role_arn: {role.arn}
                allow: {{groups: [sre]}}
                max_duration: {int(duration.total_seconds())}s
            """
        )
        for role in roles
        for eid, duration in role.entitlements
    )
    text = "version: 1\npeople: []\ndeny: []\nentitlements:\n" + textwrap.indent(entitlements, "  ")
    (directory / "policy.yaml").write_text(text)
    return directory


@pytest.fixture
def deployment(
    tmp_path: Path, moto_server: Any, broker_user: BrokerUser
) -> Iterator[dict[str, Any]]:
    """A migrated SQLite database, a policy naming two well set-up roles, the broker's keys."""
    iam = moto_server.client("iam")
    roles = [
        create_target_role(iam, broker_user.arn, max_session=7200, durations=(timedelta(hours=2),)),
        create_target_role(iam, broker_user.arn, path="/team/"),
    ]
    broker_user.allow_roles(*(r.arn for r in roles))
    database = Database(f"sqlite:///{tmp_path / 'broker.db'}")
    upgrade(database)
    database.dispose()
    yield {
        "roles": roles,
        "env": {
            "BROKER_ENV": "testing",
            "BROKER_DATABASE_URL": database.url,
            "BROKER_POLICY_DIR": str(write_policy(tmp_path / "policies", roles)),
            "BROKER_AWS_ENDPOINT_URL": moto_server.endpoint_url,
            "BROKER_AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": broker_user.access_key_id,
            "AWS_SECRET_ACCESS_KEY": broker_user.secret_access_key,
        },
    }


def run_broker(env: dict[str, str], *args: str) -> tuple[int, str]:
    """`broker ARGS` as from a shell, configured only by the environment."""
    result = CliRunner().invoke(build(), list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.output


def statuses(report: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    return [(c["check"], c["subject"], c["status"]) for c in report["checks"]]


def test_the_command_reads_the_server_configuration_and_passes(
    deployment: dict[str, Any], broker_user: BrokerUser
) -> None:
    code, output = run_broker(deployment["env"], "doctor", "--format", "json")

    assert code == 0, output
    report = json.loads(output)
    first, second = (r.arn for r in deployment["roles"])
    assert report["ok"] is True
    assert statuses(report) == [
        ("configuration", None, "warn"),  # BROKER_ENV=testing
        ("policy", None, "ok"),
        ("database", None, "ok"),
        ("identity provider", None, "warn"),  # none configured
        ("aws identity", None, "ok"),
        ("role chaining", None, "ok"),
        ("role", first, "ok"),
        ("trust policy", first, "ok"),
        ("max session duration", first, "ok"),
        ("revocation policy", first, "warn"),  # moto has no policy simulator
        ("role", second, "ok"),
        ("trust policy", second, "ok"),
        ("max session duration", second, "ok"),
        ("revocation policy", second, "warn"),
    ]
    checks = {(c["check"], c["subject"]): c for c in report["checks"]}
    assert checks[("aws identity", None)]["message"] == f"the broker runs as {broker_user.arn}"
    assert "2 entitlements on 2 roles" in checks[("policy", None)]["message"]
    assert report["counts"] == {"ok": 10, "warn": 4, "fail": 0}


@needs_iamsim
def test_every_role_check_is_ok_where_iam_can_simulate(
    deployment: dict[str, Any], broker_user: BrokerUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in deployment["env"].items():
        monkeypatch.setenv(name, value)
    app = create_app()
    app.extensions[EXTENSION] = dataclasses.replace(services(app), iam=broker_user.iam)

    result = app.test_cli_runner().invoke(doctor_command, [])

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[-1] == "0 failed, 2 warnings, 12 ok"
    warned = [line for line in lines if line.startswith("warn")]
    assert [w.split(":")[0] for w in warned] == ["warn  configuration", "warn  identity provider"]
    for role in deployment["roles"]:
        expected = f"ok    revocation policy ({role.arn}): the broker may read and write"
        assert any(line.startswith(expected) for line in lines)


def test_each_broken_role_fails_the_command_with_its_fix(
    deployment: dict[str, Any], moto_server: Any, broker_user: BrokerUser, tmp_path: Path
) -> None:
    iam = moto_server.client("iam")
    short = create_target_role(iam, broker_user.arn, durations=(timedelta(hours=3),))
    missing = TargetRole(f"{short.arn}-gone", (("gone", timedelta(hours=1)),))
    other = tmp_path / "other-policies"
    write_policy(other, [*deployment["roles"], short, missing])

    code, output = run_broker(deployment["env"], "doctor", "--dir", str(other))

    assert code == 1
    lines = output.splitlines()
    assert f"FAIL  max session duration ({short.arn}): MaxSessionDuration is 3600 s (1h)," in (
        output
    )
    fix = f"aws iam update-role --role-name {short.parts.name} --max-session-duration 10800"
    assert f"      fix: {fix}" in lines
    assert f"FAIL  role ({missing.arn}): no role named {missing.parts.name}" in output
    assert lines[-1].startswith("2 failed, ")


def test_a_configuration_error_is_a_failed_check(deployment: dict[str, Any]) -> None:
    env = dict(deployment["env"], BROKER_SESION_IDLE_SECONDS="600")

    code, output = run_broker(env, "doctor", "--format", "json")

    assert code == 1
    (check,) = json.loads(output)["checks"]
    assert (check["check"], check["status"]) == ("configuration", "fail")
    assert "BROKER_SESION_IDLE_SECONDS" in check["message"]
    assert "did you mean SESSION_IDLE_SECONDS" in check["message"]


def test_a_database_never_migrated_or_behind_fails_with_the_upgrade_command(db_url: str) -> None:
    database = Database(db_url)
    try:
        never = check_database(database, production=True)
        assert (never.status, never.fix) == ("fail", "broker db upgrade")
        assert "was never migrated" in never.message
        script = ScriptDirectory.from_config(alembic_config(database))
        (head,) = script.get_heads()
        previous = script.get_revision(head).down_revision
        assert isinstance(previous, str)
        upgrade(database, previous)
        behind = check_database(database, production=True)
        assert (behind.status, behind.fix) == ("fail", "broker db upgrade")
        assert f"at revision {previous}, head is {head}" in behind.message
        upgrade(database)
        current = check_database(database, production=True)
        expected = "warn" if database.dialect == "sqlite" else "ok"  # SQLite in production
        assert current.status == expected and head in current.message
    finally:
        database.dispose()


def test_an_unreachable_database_fails_without_showing_its_password() -> None:
    url = f"postgresql+psycopg://broker:hunter2@127.0.0.1:{closed_port()}/broker"
    database = Database(url)
    try:
        check = check_database(database, production=True)
    finally:
        database.dispose()
    assert check.status == "fail" and "cannot reach" in check.message
    assert "hunter2" not in check.message and "***" in check.message
    assert check.fix is not None and "BROKER_DATABASE_URL" in check.fix


@pytest.mark.skipif(not node_modules_present(), reason="run `npm ci` in tests/node")
def test_a_real_identity_provider_passes_and_a_missing_one_fails() -> None:
    with OidcProvider() as idp:
        checks = check_identity_provider(
            idp.issuer, "broker", client_secret="broker-test-secret", allowed_algs=("RS256",)
        )
        assert [(c.check, c.status) for c in checks] == [
            ("identity provider", "ok"),
            ("identity provider keys", "ok"),
        ], checks
        assert "client authentication client_secret_basic" in checks[0].message
        wrong_algs = check_identity_provider(
            idp.issuer, "broker", client_secret="s", allowed_algs=("EdDSA",)
        )
        assert wrong_algs[0].status == "fail" or wrong_algs[1].status == "fail"
    down = f"http://127.0.0.1:{closed_port()}"
    (check,) = check_identity_provider(down, "broker", client_secret=None, allowed_algs=("RS256",))
    assert check.status == "fail" and down in check.message
    assert check.fix is not None and f"{down}/.well-known/openid-configuration" in check.fix


def provider(**overrides: Any) -> Any:
    """A provider answering from dicts (discovery overrides, one RSA signing key)."""
    discovery = {
        "issuer": "https://idp.example",
        "authorization_endpoint": "https://idp.example/authorize",
        "token_endpoint": "https://idp.example/token",
        "jwks_uri": "https://idp.example/keys",
        **overrides,
    }
    from joserfc.jwk import RSAKey

    key = RSAKey.generate_key(2048).as_dict(private=False)
    documents = {
        "https://idp.example/.well-known/openid-configuration": discovery,
        "https://idp.example/keys": {"keys": [dict(key, use="sig", kid="k1")]},
    }
    return documents.__getitem__


@pytest.mark.parametrize(
    ("overrides", "status", "words"),
    [
        ({}, "ok", "client authentication none"),
        ({"code_challenge_methods_supported": ["plain"]}, "fail", "PKCE S256"),
        ({"id_token_signing_alg_values_supported": ["HS256"]}, "fail", "BROKER_OIDC_ALLOWED_ALGS"),
        ({"token_endpoint_auth_methods_supported": ["private_key_jwt"]}, "warn", "lists"),
        ({"token_endpoint": None}, "fail", "no token_endpoint"),
        ({"issuer": "https://evil.example"}, "fail", "refusing to trust it"),
    ],
)
def test_discovery_documents_that_cannot_work_say_why(
    overrides: dict[str, Any], status: str, words: str
) -> None:
    checks = check_identity_provider(
        "https://idp.example",
        "broker",
        client_secret=None,
        allowed_algs=("RS256",),
        http_get=provider(**overrides),
    )
    assert checks[0].status == status and words in checks[0].message, checks


def test_keys_that_cannot_verify_the_allowed_algorithms_fail() -> None:
    checks = check_identity_provider(
        "https://idp.example",
        "broker",
        client_secret=None,
        allowed_algs=("ES256",),
        http_get=provider(),
    )
    assert [c.status for c in checks] == ["ok", "fail"]
    assert "can verify ['ES256'] signatures" in checks[1].message


def test_the_text_report_puts_each_fix_under_its_check() -> None:
    report = Report(
        [
            Check("database", "ok", "postgresql reachable"),
            Check("trust policy", "fail", "does not let x use y", subject="arn:r", fix="a\n{\n}"),
        ]
    )
    assert report.to_text() == (
        "ok    database: postgresql reachable\n"
        "FAIL  trust policy (arn:r): does not let x use y\n"
        "      fix: a\n"
        "        {\n"
        "        }\n"
        "1 failed, 0 warnings, 1 ok\n"
    )
    assert json.loads(report.to_json())["ok"] is False
