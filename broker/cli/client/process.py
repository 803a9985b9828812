"""`broker credential-process`: credentials for AWS tools on demand, reused while fresh.

The AWS CLI runs this once per command, and parallel commands run it in parallel: the cache
(broker.cli.client.cache) hands out the credentials issued last until shortly before they
expire, and a lock makes concurrent runs wait for one refresh instead of each minting a
session of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from broker.cli.client.cache import (
    CACHE_DIR,
    CredentialCache,
    DirectoryCache,
    FileCache,
    KeyringCache,
    cache_key,
    lock_path,
    reuse_or_issue,
)
from broker.cli.client.options import duration_option, reason_option
from broker.cli.client.state import ClientState, pass_state
from broker.cli.client.store import Store


def credential_cache(store: Store, cache_file: str | None) -> CredentialCache:
    """The named file, else the OS keyring when usable, else the config directory's cache."""
    if cache_file:
        return FileCache(Path(cache_file))
    if store.keyring is not None:
        return KeyringCache(store.keyring)
    return DirectoryCache(store.directory / CACHE_DIR)


@click.command("credential-process")
@click.argument("entitlement")
@duration_option
@reason_option
@click.option(
    "--cache-file",
    type=click.Path(dir_okay=False),
    envvar="BROKER_CREDENTIAL_CACHE_FILE",
    help="Keep reusable credentials in this file (plain text, mode 0600). Default: the OS "
    "keyring when there is one, else files (0600) in the CLI's config directory.",
)
@click.option("--no-cache", is_flag=True, help="Issue fresh credentials on every run.")
@pass_state
def credential_process(
    state: ClientState,
    entitlement: str,
    duration: str | None,
    reason: str | None,
    cache_file: str | None,
    no_cache: bool,
) -> None:
    """Print credentials for ENTITLEMENT as AWS `credential_process` JSON (Version 1).

    Reused until shortly before they expire (15 minutes, when the AWS SDKs start refreshing;
    less for short-lived credentials). On any error: a message on stderr, no JSON, a non-zero
    exit.
    """
    client, sign_in = state.signed_in()
    if no_cache:
        credentials, _ = state.issue(entitlement, duration=duration, reason=reason)
    else:
        store = state.get_store()
        credentials, _ = reuse_or_issue(
            credential_cache(store, cache_file),
            cache_key(client.url, sign_in.token, entitlement, duration),
            lock=lock_path(store.directory / CACHE_DIR, client.url, entitlement, duration),
            clock=state.clock,
            issue=lambda: state.issue(entitlement, duration=duration, reason=reason)[0],
        )
    click.echo(json.dumps(credentials.to_process_json()))
