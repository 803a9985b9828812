"""Getting AWS credentials into tools: `creds`, `configure`, `credential-process`, `exec`."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click

from broker.cli.client import awsfiles
from broker.cli.client.cache import (
    AwsCredentials,
    CredentialCache,
    FileCache,
    KeyringCache,
    NoCache,
    cache_key,
    rfc3339,
)
from broker.cli.client.errors import ClientError
from broker.cli.client.state import ClientState, pass_state
from broker.cli.client.store import usable_keyring

duration_option = click.option("--duration", help="How long the credentials last, e.g. 1h.")
reason_option = click.option("--reason", help="Why you need them (recorded in the audit trail).")


# -- creds ---------------------------------------------------------------------------------------


@click.command("creds")
@click.argument("entitlement")
@click.option("--profile", help="Profile to write (default: the entitlement's name).")
@duration_option
@reason_option
@click.option(
    "--force", is_flag=True, help="Replace the keys of a profile the broker did not write."
)
@pass_state
def creds(
    state: ClientState,
    entitlement: str,
    profile: str | None,
    duration: str | None,
    reason: str | None,
    force: bool,
) -> None:
    """Write credentials for ENTITLEMENT into the AWS credentials file as a profile."""
    profile = awsfiles.check_profile_name(profile or entitlement)
    path = awsfiles.credentials_path()
    names = awsfiles.credentials_section(profile)
    existing = awsfiles.read_section(path, names)
    if existing is not None and not force and not awsfiles.is_managed(existing):
        # Refuse before asking AWS for credentials nobody will use.
        raise awsfiles.NotOurs(
            f"Profile [{profile}] in {path} was not written by the broker, so it was left as is.",
            hint="Pick another --profile, or pass --force to replace its keys.",
        )
    credentials, body = state.issue(entitlement, duration=duration, reason=reason)
    values = {
        "aws_access_key_id": credentials.access_key_id,
        "aws_secret_access_key": credentials.secret_access_key,
        "aws_session_token": credentials.session_token,
        awsfiles.EXPIRATION_KEY: rfc3339(credentials.expiration),
        awsfiles.ENTITLEMENT_KEY: entitlement,
        awsfiles.MANAGED_KEY: "true",
    }
    owned = (*awsfiles.CREDENTIAL_KEYS, awsfiles.EXPIRATION_KEY, awsfiles.ENTITLEMENT_KEY)
    written = awsfiles.update_file(
        path,
        lambda text: awsfiles.set_section(text, names, values, owned=owned, force=force, path=path),
    )
    left = int((credentials.expiration - state.clock()).total_seconds() // 60)
    click.echo(
        f"Wrote profile [{profile}] to {written}: {body.get('role_arn')}, "
        f"expires {rfc3339(credentials.expiration)} (in {left} min)."
    )
    click.echo(f"Try: aws sts get-caller-identity --profile {profile}")


# -- configure -----------------------------------------------------------------------------------


def broker_executable(use_path: bool) -> str:
    """The command AWS tools should run: this `broker`'s absolute path, or plain `broker`.

    SDKs run `credential_process` from IDEs, cron and GUI apps whose PATH often lacks a
    virtualenv's or pipx's bin directory, so the absolute path is the default; `--use-path`
    writes plain `broker` for installs whose path changes on upgrade (e.g. Homebrew).
    """
    if use_path:
        return "broker"
    argv0 = sys.argv[0]
    candidate = argv0 if os.sep in argv0 else shutil.which(argv0)
    if candidate and Path(candidate).name.startswith("broker") and os.access(candidate, os.X_OK):
        return str(Path(candidate).resolve())
    found = shutil.which("broker")
    return str(Path(found).resolve()) if found else "broker"


@click.command("configure")
@click.argument("entitlement")
@click.option("--profile", help="Profile to write in the AWS config file (default: ENTITLEMENT).")
@duration_option
@reason_option
@click.option(
    "--cache-file",
    type=click.Path(dir_okay=False),
    help="Let credential-process cache credentials in this file (plain text, mode 0600).",
)
@click.option("--use-path", is_flag=True, help="Write plain `broker`, found on PATH at run time.")
@click.option("--force", is_flag=True, help="Take over a profile the broker did not write.")
@pass_state
def configure(
    state: ClientState,
    entitlement: str,
    profile: str | None,
    duration: str | None,
    reason: str | None,
    cache_file: str | None,
    use_path: bool,
    force: bool,
) -> None:
    """Make an AWS profile get ENTITLEMENT's credentials on demand (credential_process)."""
    profile = awsfiles.check_profile_name(profile or entitlement)
    argv = [broker_executable(use_path), "credential-process", entitlement]
    if duration:
        argv += ["--duration", duration]
    if reason:
        argv += ["--reason", reason]
    if cache_file:
        argv += ["--cache-file", str(Path(cache_file).expanduser().resolve())]
    command = " ".join(shlex.quote(part) for part in argv)
    path = awsfiles.config_path()
    names = awsfiles.config_section(profile)
    values = {
        "credential_process": command,
        awsfiles.ENTITLEMENT_KEY: entitlement,
        awsfiles.MANAGED_KEY: "true",
    }
    owned = ("credential_process", awsfiles.ENTITLEMENT_KEY)
    written = awsfiles.update_file(
        path,
        lambda text: awsfiles.set_section(text, names, values, owned=owned, force=force, path=path),
    )
    click.echo(f"Wrote [{names[0]}] to {written}:\n  credential_process = {command}")
    shadow = awsfiles.read_section(
        awsfiles.credentials_path(), awsfiles.credentials_section(profile)
    )
    if shadow and "aws_access_key_id" in shadow:
        click.echo(
            f"Warning: {awsfiles.credentials_path()} also has keys for [{profile}]; AWS tools "
            "use those first. Remove that profile there (or pick another --profile).",
            err=True,
        )
    click.echo(f"Try: aws sts get-caller-identity --profile {profile}")


# -- credential-process --------------------------------------------------------------------------


@click.command("credential-process")
@click.argument("entitlement")
@duration_option
@reason_option
@click.option(
    "--cache-file",
    type=click.Path(dir_okay=False),
    envvar="BROKER_CREDENTIAL_CACHE_FILE",
    help="Reuse credentials through this file (plain text, mode 0600). Default: the OS keyring "
    "when there is one, else no reuse.",
)
@pass_state
def credential_process(
    state: ClientState,
    entitlement: str,
    duration: str | None,
    reason: str | None,
    cache_file: str | None,
) -> None:
    """Print credentials for ENTITLEMENT as AWS `credential_process` JSON (Version 1).

    Reused until 5 minutes before they expire. On any error: a message on stderr, no JSON,
    a non-zero exit.
    """
    client, sign_in = state.signed_in()
    cache = _cache(cache_file)
    key = cache_key(client.url, sign_in.token, entitlement, duration)
    cached = cache.get(key)
    if cached is not None and cached.fresh(state.clock()):
        credentials = cached
    else:
        credentials, _ = state.issue(entitlement, duration=duration, reason=reason)
        cache.put(key, credentials)
    click.echo(json.dumps(credentials.to_process_json()))


def _cache(cache_file: str | None) -> CredentialCache:
    if cache_file:
        return FileCache(Path(cache_file))
    keyring = usable_keyring()
    return KeyringCache(keyring) if keyring is not None else NoCache()


# -- exec ----------------------------------------------------------------------------------------


def child_environment(credentials: AwsCredentials, base: dict[str, str]) -> dict[str, str]:
    """`base` with these credentials in it and every other AWS credential source taken out."""
    env = {
        k: v
        for k, v in base.items()
        if k
        not in (
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_SECURITY_TOKEN",
            "AWS_CREDENTIAL_FILE",
        )
    }
    env.update(
        AWS_ACCESS_KEY_ID=credentials.access_key_id,
        AWS_SECRET_ACCESS_KEY=credentials.secret_access_key,
        AWS_SESSION_TOKEN=credentials.session_token,
        AWS_CREDENTIAL_EXPIRATION=rfc3339(credentials.expiration),
    )
    return env


@click.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.argument("entitlement")
@duration_option
@reason_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_state
def exec_command(
    state: ClientState,
    entitlement: str,
    duration: str | None,
    reason: str | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND with ENTITLEMENT's credentials in its environment only.

    Example: broker exec app-read -- aws s3 ls. Exits with COMMAND's exit code.
    """
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ClientError("No command given.", hint="Example: broker exec ROLE -- aws s3 ls")
    credentials, _ = state.issue(entitlement, duration=duration, reason=reason)
    env = child_environment(credentials, dict(os.environ))
    try:
        result = subprocess.run(list(command), env=env, check=False)  # noqa: S603 - the user's command
    except FileNotFoundError as exc:
        raise ClientError(f"Command not found: {command[0]}", code="not_found") from exc
    code = result.returncode
    sys.exit(128 - code if code < 0 else code)
