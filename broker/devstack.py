"""`broker dev`: one command for a newcomer.

Starts the outside parts on loopback — an AWS endpoint (moto server) with the policy's roles
created, the insecure development identity provider with demo users, and a stand-in for AWS's
console federation endpoint — then points the normal configuration at them and runs the web
app and the scheduler in this process. Nothing here is a special code path of the broker itself.

The parts listen on fixed ports (`--port` and the three after it: 8000 web, 8001 AWS, 8002
identity provider, 8003 console sign-in), so addresses stay the same from one start to the
next. The settings are written to the instance folder's `broker.toml`, where every other
command (`broker audit verify`, `broker token mint`, ...) reads them. One `broker dev` per
instance folder: a second one is told so and stops.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from broker.audit.checkpoints import PRIVATE_KEY_FILE, generate_key_pair
from broker.aws import make_client, parse_role_arn
from broker.devfederation import DevFederationEndpoint, sts_who_is
from broker.devidp import DEMO_USERS, DevIdentityProvider
from broker.iam_setup import roles_in_policy_dir, trust_policy

DEV_ACCOUNT = "111122223333"
READ_ONLY_ACTIONS = [
    "s3:Get*",
    "s3:List*",
    "ec2:Describe*",
    "logs:Describe*",
    "logs:Get*",
    "logs:FilterLogEvents",
    "cloudwatch:Get*",
    "cloudwatch:List*",
    "cloudtrail:LookupEvents",
]
CALLBACK_PATHS = ("/auth/callback", "/login/callback", "/oidc/callback")
DEFAULT_PORT = 8000
REGION = "us-east-1"
SETTINGS_FILE = "broker.toml"
SETTINGS_MARK = "# Written by `broker dev`"
# Written to broker.toml for the other commands; secrets (the session key, the identity
# provider's client secret) stay in the dev process.
SHARED_SETTINGS = (
    "ENV",
    "DATABASE_URL",
    "POLICY_DIR",
    "BASE_URL",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "OIDC_ISSUER",
    "OIDC_CLIENT_ID",
    "OIDC_ALLOWED_ALGS",
    "AUDIT_SIGNING_KEY_FILE",
    "CHECKPOINT_SECONDS",
    "FEDERATION_ENDPOINT",
)
log = logging.getLogger(__name__)


def role_permissions(role_name: str) -> dict[str, Any]:
    """What a demo role may do: read-only roles read, the rest anything (sessions narrow it)."""
    readonly = "read" in role_name or "audit" in role_name
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": READ_ONLY_ACTIONS if readonly else "*",
                "Resource": "*",
            }
        ],
    }


@dataclass(frozen=True)
class DevPorts:
    """Where each part listens: `--port` and the three after it (0: free ports for all)."""

    web: int
    aws: int
    idp: int
    federation: int

    @classmethod
    def from_base(cls, base: int) -> DevPorts:
        """The ports for `--port base`."""
        if base == 0:
            return cls(0, 0, 0, 0)
        return cls(base, base + 1, base + 2, base + 3)

    def named(self) -> list[tuple[str, int]]:
        """(what listens, port) for each part."""
        return [
            ("the broker's web UI", self.web),
            ("the AWS endpoint", self.aws),
            ("the dev identity provider", self.idp),
            ("the console sign-in endpoint", self.federation),
        ]


def check_ports(host: str, ports: DevPorts) -> None:
    """Refuse to start, naming each fixed port already taken, before anything is started."""
    taken = []
    for what, port in ports.named():
        if port == 0:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            # As the servers bind (a port left in TIME_WAIT by the last run is free to them).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                taken.append(f"{port} ({what})")
    if taken:
        listed = ", ".join(taken)
        ports_are = f"Port {listed} is" if len(taken) == 1 else f"Ports {listed} are"
        raise click.ClickException(
            f"{ports_are} already in use on {host}, so dev mode did not start. Another "
            "`broker dev` (or another program) holds them: stop it, or start this one elsewhere "
            "with --port N (dev mode uses N to N+3; --port 0 picks free ports)."
        )


@dataclass
class DevStack:
    """The outside parts of dev mode, started and stopped together."""

    instance_path: Path
    policy_dir: Path
    host: str = "127.0.0.1"
    ports: DevPorts = field(default_factory=lambda: DevPorts.from_base(DEFAULT_PORT))
    idp: DevIdentityProvider = field(default_factory=DevIdentityProvider)
    federation: DevFederationEndpoint | None = None
    aws_endpoint: str = ""
    _moto: Any = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """Where the broker will answer."""
        return f"http://{self.host}:{self.ports.web}"

    def start(self) -> dict[str, Any]:
        """Start moto, the dev IdP and the federation endpoint, create the roles; return the
        broker configuration."""
        from moto.server import ThreadedMotoServer

        os.environ["MOTO_ACCOUNT_ID"] = DEV_ACCOUNT
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "dev-not-a-real-key")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "dev-not-a-real-secret")
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._moto = ThreadedMotoServer(ip_address=self.host, port=self.ports.aws, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.aws_endpoint = f"http://{host}:{port}"
        self.create_roles()
        secret = self.idp.register_client(
            "broker-dev",
            tuple(f"{self.base_url}{p}" for p in CALLBACK_PATHS),
            (f"{self.base_url}/", f"{self.base_url}/signed-out"),
        )
        issuer = self.idp.start(self.host, self.ports.idp)
        self.federation = DevFederationEndpoint(sts_who_is(self.aws_endpoint, REGION))
        federation_url = self.federation.start(self.host, self.ports.federation)
        self.instance_path.mkdir(parents=True, exist_ok=True)
        key_file = self._signing_key()
        self.config = {
            "ENV": "development",
            "SECRET_KEY": secrets.token_hex(32),
            "DATABASE_URL": f"sqlite:///{self.instance_path / 'dev.db'}",
            "POLICY_DIR": str(self.policy_dir),
            "BASE_URL": self.base_url,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.aws_endpoint,
            "OIDC_ISSUER": issuer,
            "OIDC_CLIENT_ID": "broker-dev",
            "OIDC_CLIENT_SECRET": secret,
            "OIDC_ALLOWED_ALGS": ("RS256",),
            "AUDIT_SIGNING_KEY_FILE": str(key_file),
            "CHECKPOINT_SECONDS": 60,
            "FEDERATION_ENDPOINT": federation_url,
        }
        return self.config

    def create_roles(self) -> list[str]:
        """Create every role the policy names (idempotent)."""
        iam = make_client("iam", region=REGION, endpoint_url=self.aws_endpoint, timeout=10)
        roles = roles_in_policy_dir(self.policy_dir)
        for role_arn in roles:
            arn = parse_role_arn(role_arn)
            try:
                iam.create_role(
                    RoleName=arn.name,
                    Path=arn.path,
                    # The trust policy `broker iam-policies` prints for real deployments.
                    AssumeRolePolicyDocument=json.dumps(
                        trust_policy(f"arn:aws:iam::{arn.account}:root")
                    ),
                    MaxSessionDuration=43200,
                )
                iam.put_role_policy(
                    RoleName=arn.name,
                    PolicyName="demo-permissions",
                    PolicyDocument=json.dumps(role_permissions(arn.name)),
                )
            except iam.exceptions.EntityAlreadyExistsException:
                pass
        return roles

    def write_settings(self) -> Path | None:
        """Write the shared settings to the instance folder's broker.toml, where every other
        command reads them; None (and nothing written) when that file is someone else's."""
        path = self.instance_path / SETTINGS_FILE
        if path.exists() and not path.read_text(encoding="utf-8").startswith(SETTINGS_MARK):
            return None
        lines = [
            f"{SETTINGS_MARK} for the dev instance in this folder; every broker command",
            "# reads it (`broker audit verify`, `broker token mint`, ...). Delete it to stop.",
        ]
        for name in SHARED_SETTINGS:
            value = self.config[name]
            value = list(value) if isinstance(value, tuple) else value
            # JSON strings, numbers and lists of strings are valid TOML values.
            lines.append(f"{name.lower()} = {json.dumps(value)}")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def _signing_key(self) -> Path:
        """The dev audit signing key (generated once, kept in the instance folder)."""
        key_dir = self.instance_path / "dev-audit-key"
        private = key_dir / PRIVATE_KEY_FILE
        if not private.exists():
            private, _public = generate_key_pair(key_dir)
        return private

    def stop(self) -> None:
        """Stop the federation endpoint, the IdP and moto."""
        if self.federation is not None:
            self.federation.stop()
        self.idp.stop()
        if self._moto is not None:
            self._moto.stop()
            self._moto = None


def default_instance() -> Path:
    """The instance folder every broker command reads: BROKER_INSTANCE_PATH, else Flask's."""
    chosen = os.environ.get("BROKER_INSTANCE_PATH")
    if chosen:
        return Path(chosen).resolve()
    from flask import Flask

    return Path(Flask("broker", instance_relative_config=True).instance_path)


def banner(stack: DevStack, settings: Path | None) -> str:
    """What a newcomer needs to know, printed once everything is up."""
    users = "\n".join(f"    {u.name:<16} {u.email:<26} {u.blurb}" for u in DEMO_USERS)
    here = Path(sys.executable).parent / "broker"
    console = stack.federation.url if stack.federation else ""
    if settings is None:
        shared = (
            f"  {stack.instance_path / SETTINGS_FILE} is not dev mode's, so other commands do\n"
            "  not see the dev settings; give them the database with\n"
            f"    export BROKER_ENV=development BROKER_DATABASE_URL={stack.config['DATABASE_URL']}"
        )
    elif stack.instance_path == default_instance():
        shared = f"  settings      {settings}   (every broker command reads them)"
    else:
        shared = (
            f"  settings      {settings}\n"
            "  other commands find them with\n"
            f"    export BROKER_INSTANCE_PATH={stack.instance_path}"
        )
    return f"""
broker dev mode is running (everything on loopback; nothing here is production-safe)

  web UI        {stack.base_url}/
  API           {stack.base_url}/api/v1/openapi.json
  AWS endpoint  {stack.aws_endpoint}   (moto; account {DEV_ACCOUNT}, region {REGION})
  identity      {stack.idp.issuer}   (dev IdP: pick a demo user, no password)
  console       {console}   (dev stand-in for the AWS console sign-in)
  database      {stack.config.get("DATABASE_URL")}
{shared}

  demo users:
{users}

  try (in another terminal, run `source .venv/bin/activate` first, or call {here}):
    - sign in as Erin, get credentials for dev-readonly, paste the bash exports into a shell
      and run `aws --endpoint-url {stack.aws_endpoint} sts get-caller-identity`
    - on the credentials page, "Open AWS console" signs in to the dev console stand-in
    - sign in as Sam, request prod-admin with a reason; sign in as Sasha to approve it
    - sign in as Dana (contractor): production entitlements are denied, with the reason
    - `broker login --url {stack.base_url}` then `broker creds dev-readonly --profile dev`
    - sign in as Audrey to search the audit trail and see the compliance report;
      `broker audit verify` checks the chain

  Ctrl-C stops everything.
"""


@click.command("dev")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to bind.")
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65532),
    help="The web UI's port; the AWS endpoint, identity provider and console sign-in use the "
    "next three. 0 picks free ports.",
)
@click.option("--policy-dir", default="policies", show_default=True, type=click.Path())
@click.option(
    "--instance",
    type=click.Path(file_okay=False),
    help="Instance folder (database, keys, broker.toml). Default: the one every broker command "
    "reads (BROKER_INSTANCE_PATH, else the package's instance folder).",
)
def dev_command(host: str, port: int, policy_dir: str, instance: str | None) -> None:
    """Run the broker in dev mode: embedded AWS endpoint, identity provider, demo users."""
    from broker.cli.client.locking import LockTimeout, file_lock

    if host not in ("127.0.0.1", "localhost", "::1"):
        raise click.BadParameter("dev mode binds to loopback only", param_hint="--host")
    instance_path = Path(instance).resolve() if instance else default_instance()
    ports = DevPorts.from_base(port)
    with contextlib.ExitStack() as exits:
        try:
            exits.enter_context(file_lock(instance_path / "dev.lock", wait=0))
        except LockTimeout:
            raise click.ClickException(
                f"Another `broker dev` is already running on the instance folder "
                f"{instance_path}{_where_it_answers(instance_path)}. One per folder: use that "
                "one, stop it (Ctrl-C in its terminal), or start this one with --instance DIR."
            ) from None
        check_ports(host, ports)
        if ports.web == 0:
            ports = DevPorts(_free_port(host), 0, 0, 0)
        stack = DevStack(instance_path, Path(policy_dir).resolve(), host, ports)
        exits.callback(stack.stop)
        try:
            config = stack.start()
        except OSError as exc:  # a port taken between the check and the start
            raise click.ClickException(f"Dev mode could not start: {exc}") from exc
        _run(stack, config)


def _run(stack: DevStack, config: dict[str, Any]) -> None:
    """Migrate, start the scheduler and serve until Ctrl-C."""
    from werkzeug.serving import make_server

    from broker import create_app
    from broker.db import get_database
    from broker.errors import BrokerError
    from broker.migrate import upgrade

    settings = stack.write_settings()
    scheduler: Any = None
    try:
        app = create_app(config, instance_path=str(stack.instance_path))
        upgrade(get_database(app))
        scheduler = _start_scheduler(app)
        server = make_server(stack.host, stack.ports.web, app, threaded=True)
    except BrokerError as exc:  # e.g. another scheduler on this database
        raise click.ClickException(exc.explain()) from exc
    except OSError as exc:
        raise click.ClickException(f"Dev mode could not serve the web UI: {exc}") from exc
    try:
        click.echo(banner(stack, settings))
        click.echo(f"ready: {stack.base_url}", err=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            click.echo("stopping", err=True)
    finally:
        server.server_close()
        if scheduler is not None:
            scheduler.stop()


def _where_it_answers(instance_path: Path) -> str:
    """`, answering at URL` from the running instance's broker.toml, when it says."""
    path = instance_path / SETTINGS_FILE
    try:
        import tomllib

        url = tomllib.loads(path.read_text(encoding="utf-8")).get("base_url")
    except (OSError, ValueError):
        return ""
    return f" (answering at {url})" if isinstance(url, str) else ""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _start_scheduler(app: Any) -> Any:
    from broker.scheduler import Scheduler

    scheduler = Scheduler(app)
    scheduler.start()
    return scheduler
