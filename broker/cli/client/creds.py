"""AWS profiles, with the entitlement's region: `creds` (or its exports) and `configure`."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

import click

from broker.cli.client import awsfiles
from broker.cli.client.cache import rfc3339
from broker.cli.client.environment import SHELLS, credential_variables, default_shell, exports
from broker.cli.client.errors import ClientError
from broker.cli.client.options import duration_option, reason_option, region_option
from broker.cli.client.state import (
    ClientState,
    answer_region,
    no_such_entitlement,
    pass_state,
)

# -- creds ---------------------------------------------------------------------------------------


@click.command("creds")
@click.argument("entitlement")
@click.option("--profile", help="Profile to write (default: the entitlement's name).")
@duration_option
@reason_option
@region_option
@click.option(
    "--export",
    "export",
    is_flag=True,
    help='Print shell exports instead of writing a profile: eval "$(broker creds ROLE --export)".',
)
@click.option(
    "--shell",
    type=click.Choice(SHELLS),
    help="Syntax of --export (default: fish when $SHELL is fish, powershell on Windows, else sh).",
)
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
    region: str | None,
    export: bool,
    shell: str | None,
    force: bool,
) -> None:
    """Write credentials for ENTITLEMENT into the AWS credentials file as a profile."""
    if export:
        if profile or force:
            raise click.UsageError("--export prints variables; it takes no --profile or --force.")
        credentials, body = state.issue(entitlement, duration=duration, reason=reason)
        variables = credential_variables(credentials, region or answer_region(body))
        click.echo(exports(variables, shell or default_shell()), nl=False)
        return
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
    region = region or answer_region(body)
    if region:
        _profile_region(profile, entitlement, region, force=force)
    click.echo(f"Try: aws sts get-caller-identity --profile {profile}")


def _profile_region(profile: str, entitlement: str, region: str, *, force: bool) -> None:
    """Set `region` in the config file's profile, unless that profile is the person's own."""
    path = awsfiles.config_path()
    names = awsfiles.config_section(profile)
    values = {
        "region": region,
        awsfiles.ENTITLEMENT_KEY: entitlement,
        awsfiles.MANAGED_KEY: "true",
    }
    try:
        written = awsfiles.update_file(
            path,
            lambda text: awsfiles.set_section(
                text, names, values, owned=(awsfiles.ENTITLEMENT_KEY,), force=force, path=path
            ),
        )
    except awsfiles.NotOurs:
        theirs = (awsfiles.read_section(path, names) or {}).get("region") or "none"
        click.echo(
            f"Note: [{names[0]}] in {path} is yours, so its region ({theirs}) was kept; "
            f"the broker suggests {region} (--force to write it).",
            err=True,
        )
        return
    click.echo(f"Region {region} in [{names[0]}] of {written}.")


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


def entitlement_region(state: ClientState, entitlement: str) -> str | None:
    """The entitlement's region as the broker says; ClientError when there is no such one.

    Without a sign-in or a reachable broker the profile is still written, without a region.
    """
    try:
        client, _ = state.signed_in()
        listed = client.api("GET", "/entitlements").body.get("entitlements", [])
    except ClientError as exc:
        click.echo(
            f"Note: could not ask the broker for {entitlement}'s region ({exc.message}), so the "
            "profile names none. Pass --region, or run this again after `broker login`.",
            err=True,
        )
        return None
    entries = {str(e.get("id")): e for e in listed if isinstance(e, dict)}
    entry = entries.get(entitlement)
    if entry is None:
        raise no_such_entitlement(entitlement, list(entries))
    if entry.get("verdict") == "deny":
        reasons = entry.get("reasons") or ["denied"]
        click.echo(f"Note: you may not use {entitlement} now: {reasons[0]}", err=True)
    return answer_region(entry)


@click.command("configure")
@click.argument("entitlement")
@click.option("--profile", help="Profile to write in the AWS config file (default: ENTITLEMENT).")
@duration_option
@reason_option
@region_option
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
    region: str | None,
    cache_file: str | None,
    use_path: bool,
    force: bool,
) -> None:
    """Make an AWS profile get ENTITLEMENT's credentials on demand (credential_process)."""
    profile = awsfiles.check_profile_name(profile or entitlement)
    region = region or entitlement_region(state, entitlement)
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
    if region:
        values["region"] = region
    owned = ("credential_process", awsfiles.ENTITLEMENT_KEY)
    written = awsfiles.update_file(
        path,
        lambda text: awsfiles.set_section(text, names, values, owned=owned, force=force, path=path),
    )
    click.echo(f"Wrote [{names[0]}] to {written}:\n  credential_process = {command}")
    if region:
        click.echo(f"  region = {region}")
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
