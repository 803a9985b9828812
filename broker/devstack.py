"""`broker dev`: one command for a newcomer.

Starts the outside parts on loopback — an AWS endpoint (moto server) with the policy's roles
created, and the insecure development identity provider with demo users — then points the
normal configuration at them and runs the web app and the scheduler in this process. Nothing
here is a special code path of the broker itself.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from broker.audit.checkpoints import PRIVATE_KEY_FILE, generate_key_pair
from broker.aws import make_client, parse_role_arn
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


@dataclass
class DevStack:
    """The outside parts of dev mode, started and stopped together."""

    instance_path: Path
    policy_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    idp: DevIdentityProvider = field(default_factory=DevIdentityProvider)
    aws_endpoint: str = ""
    _moto: Any = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """Where the broker will answer."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> dict[str, Any]:
        """Start moto and the dev IdP, create the roles; return the broker configuration."""
        from moto.server import ThreadedMotoServer

        os.environ["MOTO_ACCOUNT_ID"] = DEV_ACCOUNT
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "dev-not-a-real-key")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "dev-not-a-real-secret")
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._moto = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.aws_endpoint = f"http://{host}:{port}"
        self.create_roles()
        secret = self.idp.register_client(
            "broker-dev",
            tuple(f"{self.base_url}{p}" for p in CALLBACK_PATHS),
            (f"{self.base_url}/", f"{self.base_url}/signed-out"),
        )
        issuer = self.idp.start(self.host)
        self.instance_path.mkdir(parents=True, exist_ok=True)
        key_file = self._signing_key()
        self.config = {
            "ENV": "development",
            "SECRET_KEY": secrets.token_hex(32),
            "DATABASE_URL": f"sqlite:///{self.instance_path / 'dev.db'}",
            "POLICY_DIR": str(self.policy_dir),
            "BASE_URL": self.base_url,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.aws_endpoint,
            "OIDC_ISSUER": issuer,
            "OIDC_CLIENT_ID": "broker-dev",
            "OIDC_CLIENT_SECRET": secret,
            "OIDC_ALLOWED_ALGS": ("RS256",),
            "AUDIT_SIGNING_KEY_FILE": str(key_file),
            "CHECKPOINT_SECONDS": 60,
        }
        return self.config

    def create_roles(self) -> list[str]:
        """Create every role the policy names (idempotent)."""
        iam = make_client("iam", region="us-east-1", endpoint_url=self.aws_endpoint, timeout=10)
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

    def _signing_key(self) -> Path:
        """The dev audit signing key (generated once, kept in the instance folder)."""
        key_dir = self.instance_path / "dev-audit-key"
        private = key_dir / PRIVATE_KEY_FILE
        if not private.exists():
            private, _public = generate_key_pair(key_dir)
        return private

    def stop(self) -> None:
        """Stop the IdP and moto."""
        self.idp.stop()
        if self._moto is not None:
            self._moto.stop()
            self._moto = None


def banner(stack: DevStack) -> str:
    """What a newcomer needs to know, printed once everything is up."""
    users = "\n".join(f"    {u.name:<16} {u.email:<26} {u.blurb}" for u in DEMO_USERS)
    return f"""
broker dev mode is running (everything on loopback; nothing here is production-safe)

  web UI        {stack.base_url}/
  API           {stack.base_url}/api/v1/openapi.json
  AWS endpoint  {stack.aws_endpoint}   (moto; account {DEV_ACCOUNT})
  identity      {stack.idp.issuer}   (dev IdP: pick a demo user, no password)
  database      {stack.config.get("DATABASE_URL")}

  demo users:
{users}

  try:
    - sign in as Erin, get credentials for dev-readonly, paste the exports into a shell and run
      `aws --endpoint-url {stack.aws_endpoint} sts get-caller-identity`
    - sign in as Sam, request prod-admin with a reason; sign in as Sasha to approve it
    - sign in as Dana (contractor): production entitlements are denied, with the reason
    - `broker login --url {stack.base_url}` then `broker creds dev-readonly --profile dev`
    - sign in as Audrey to search and export the audit trail; `broker audit verify`

  Ctrl-C stops everything.
"""


@click.command("dev")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="0 picks a free port.")
@click.option("--policy-dir", default="policies", show_default=True, type=click.Path())
@click.option("--instance", default="instance", show_default=True, type=click.Path())
def dev_command(host: str, port: int, policy_dir: str, instance: str) -> None:
    """Run the broker in dev mode: embedded AWS endpoint, identity provider, demo users."""
    from werkzeug.serving import make_server

    from broker import create_app
    from broker.db import get_database
    from broker.migrate import upgrade

    if host not in ("127.0.0.1", "localhost", "::1"):
        raise click.BadParameter("dev mode binds to loopback only", param_hint="--host")
    server_socket_port = port
    stack = DevStack(Path(instance).resolve(), Path(policy_dir).resolve(), host, port)
    if port == 0:
        import socket

        with socket.socket() as sock:
            sock.bind((host, 0))
            server_socket_port = sock.getsockname()[1]
        stack.port = server_socket_port
    config = stack.start()
    scheduler: Any = None
    try:
        app = create_app(config)
        upgrade(get_database(app))
        scheduler = _start_scheduler(app)
        server = make_server(host, stack.port, app, threaded=True)
        click.echo(banner(stack))
        click.echo(f"ready: {stack.base_url}", err=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            click.echo("stopping", err=True)
    finally:
        if scheduler is not None:
            scheduler.stop()
        stack.stop()


def _start_scheduler(app: Any) -> Any:
    from broker.scheduler import Scheduler

    scheduler = Scheduler(app)
    scheduler.start()
    return scheduler
