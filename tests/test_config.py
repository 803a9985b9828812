"""Configuration: sources in order, validated at startup with messages that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import create_app
from broker.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _base(db_url: str) -> dict[str, object]:
    return {"ENV": "testing", "DATABASE_URL": db_url, "POLICY_DIR": str(ROOT / "policies")}


PRODUCTION = {
    "ENV": "production",
    "BASE_URL": "https://broker.example.com",
    "OIDC_ISSUER": "https://idp.example.com",
    "OIDC_CLIENT_ID": "broker",
}


def test_production_requires_a_secret_key(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BROKER_SECRET_KEY", raising=False)
    with pytest.raises(ConfigError) as info:
        create_app({**_base(db_url), "ENV": "production"})
    assert "BROKER_SECRET_KEY" in str(info.value) and "<missing>" in str(info.value)
    with pytest.raises(ConfigError, match="shorter than 32"):
        create_app({**_base(db_url), "ENV": "production", "SECRET_KEY": "short"})
    app = create_app({**_base(db_url), **PRODUCTION, "SECRET_KEY": "k" * 40})
    assert app.config["SECRET_KEY"] == "k" * 40


def test_a_wrong_setting_names_itself_what_it_got_and_what_it_expects(db_url: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_app({**_base(db_url), "STS_TIMEOUT_SECONDS": -3})
    message = str(info.value)
    assert "BROKER_STS_TIMEOUT_SECONDS" in message and "-3" in message and "greater than" in message
    with pytest.raises(ConfigError, match="BROKER_DATABASE_URL"):
        create_app({**_base(db_url), "DATABASE_URL": "mysql://x"})
    with pytest.raises(ConfigError, match="asymmetric"):
        create_app({**_base(db_url), "OIDC_ALLOWED_ALGS": "RS256,HS256"})


def test_sources_apply_in_order(
    db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "broker.toml").write_text('aws_region = "eu-west-1"\nsts_max_attempts = 2\n')
    monkeypatch.setenv("BROKER_STS_MAX_ATTEMPTS", "3")
    from broker import config as config_module

    monkeypatch.setenv("BROKER_INSTANCE_PATH", str(instance))
    app = create_app(_base(db_url))
    assert app.config["AWS_REGION"] == "eu-west-1"  # instance file beats the default
    assert app.config["STS_MAX_ATTEMPTS"] == 3  # environment beats the instance file
    app = create_app({**_base(db_url), "STS_MAX_ATTEMPTS": 5})
    assert app.config["STS_MAX_ATTEMPTS"] == 5  # test config beats everything
    assert config_module.INSTANCE_FILE == "broker.toml"


def test_a_bad_policy_directory_stops_startup_with_file_and_line(
    db_url: str, tmp_path: Path
) -> None:
    bad = tmp_path / "policies"
    bad.mkdir()
    (bad / "entitlements.yaml").write_text(
        "version: 1\n"
        "entitlements:\n"
        "  - id: broken\n"
        "    role_arn: arn:aws:iam::111122223333:role/x\n"
        "    allow: {groups: [a]}\n"
        "    max_duration: 13h\n"
    )
    with pytest.raises(ConfigError) as info:
        create_app({**_base(db_url), "POLICY_DIR": str(bad)})
    assert f"{bad / 'entitlements.yaml'}:6:" in str(info.value) or "entitlements.yaml:6:" in str(
        info.value
    )


def test_a_missing_policy_directory_is_named(db_url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does-not-exist"):
        create_app({**_base(db_url), "POLICY_DIR": str(tmp_path / "does-not-exist")})


def test_production_needs_https_base_url_and_an_identity_provider(db_url: str) -> None:
    prod = {
        **_base(db_url),
        "ENV": "production",
        "SECRET_KEY": "k" * 40,
        "OIDC_ISSUER": "https://idp.example.com",
        "OIDC_CLIENT_ID": "broker",
    }
    without = {k: v for k, v in prod.items() if k != "BASE_URL"}
    with pytest.raises(ConfigError, match="BROKER_BASE_URL.*<missing>"):
        create_app(without)
    with pytest.raises(ConfigError, match="BROKER_BASE_URL.*https://"):
        create_app({**prod, "BASE_URL": "http://broker.example.com"})
    with pytest.raises(ConfigError, match="BROKER_OIDC_ISSUER"):
        create_app({**prod, "BASE_URL": "https://broker.example.com", "OIDC_ISSUER": None})
    with pytest.raises(ConfigError, match="https:// issuer"):
        create_app({**prod, "BASE_URL": "https://broker.example.com", "OIDC_ISSUER": "http://idp"})
    app = create_app({**prod, "BASE_URL": "https://broker.example.com"})
    response = app.test_client().get("/healthz")  # plain http to the worker, no proxy headers
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


def test_unknown_settings_stop_startup_with_a_suggestion(
    db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BROKER_SESION_IDLE_SECONDS", "60")
    with pytest.raises(ConfigError) as info:
        create_app(_base(db_url))
    assert "BROKER_SESION_IDLE_SECONDS" in str(info.value)
    assert "did you mean SESSION_IDLE_SECONDS" in str(info.value)
    monkeypatch.delenv("BROKER_SESION_IDLE_SECONDS")
    monkeypatch.setenv("BROKER_URL", "https://broker.example.com")  # the engineer CLI's own
    create_app(_base(db_url))
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "broker.toml").write_text('aws_regoin = "eu-west-1"\n')
    monkeypatch.setenv("BROKER_INSTANCE_PATH", str(instance))
    with pytest.raises(ConfigError, match="unknown setting 'aws_regoin'; did you mean AWS_REGION"):
        create_app(_base(db_url))


def test_trusted_proxies_must_be_addresses(db_url: str) -> None:
    with pytest.raises(ConfigError, match="BROKER_TRUSTED_PROXIES"):
        create_app({**_base(db_url), "TRUSTED_PROXIES": "10.0.0.0/8,load-balancer"})
