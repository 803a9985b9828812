"""`broker audit ...`: verify, export, report, and create a checkpoint signing key."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flask import current_app
from flask.cli import with_appcontext

from broker.audit.chain import AuditLog, EventContext, NewEvent, verify_database
from broker.audit.checkpoints import (
    InvalidCheckpoint,
    checkpoint_record,
    generate_key_pair,
    load_public_key,
    load_signing_key,
    verify_checkpoint,
)
from broker.audit.export import (
    FORMATS,
    ExportFilter,
    as_format,
    count_events,
    export,
)
from broker.audit.report import build_report, report_csv, report_html
from broker.audit.verify_file import verify_file
from broker.db import get_database
from broker.errors import BrokerError
from broker.migrate import needs_migrated_database
from broker.models import AuditCheckpoint, utcnow
from broker.policy_store import get_policy


class Timestamp(click.ParamType):  # type: ignore[type-arg]
    """An ISO 8601 date or time; without a zone it is UTC."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            self.fail(
                f"{value!r} is not a date or time like 2024-05-01 or 2024-05-01T12:00Z", param, ctx
            )
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


TIME = Timestamp()


@click.group("audit")
def audit_cli() -> None:
    """Inspect, verify, export and report on the audit trail."""


@audit_cli.command("verify")
@click.argument(
    "file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--public-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ed25519 public key (PEM) that signed the checkpoints; needed with FILE. For the "
    "database it defaults to the public half of BROKER_AUDIT_SIGNING_KEY_FILE.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="With FILE: also fail when some events are not covered by a signature.",
)
def verify_command(file: Path | None, public_key: Path | None, strict: bool) -> None:
    """Verify the chain in the database, or an exported FILE offline (naming the broken line)."""
    if file is None:
        _verify_database(public_key)
        return
    if public_key is None:
        raise click.UsageError("Verifying a file needs --public-key (the checkpoint signing key).")
    try:
        key = load_public_key(public_key)
    except BrokerError as exc:
        raise click.ClickException(exc.explain()) from exc
    result = verify_file(file, key)
    if not result.ok:
        click.echo(f"{file}: {result.summary()}", err=True)
        raise SystemExit(1)
    click.echo(result.summary())
    if strict and (result.unanchored or result.unsigned_tail or not result.checkpoints):
        click.echo("--strict: some events are not covered by a checkpoint signature", err=True)
        raise SystemExit(1)


@with_appcontext
@needs_migrated_database
def _verify_database(public_key: Path | None) -> None:
    """Verify the chain, its head and its signed checkpoints in one snapshot (never blocking
    writers), with the given public key or the configured signing key's public half."""
    try:
        key = _database_key(public_key)
    except BrokerError as exc:
        raise click.ClickException(exc.explain()) from exc
    check = None
    if key is not None:
        verifying_key = key

        def check(checkpoint: AuditCheckpoint) -> str | None:
            try:
                verify_checkpoint(verifying_key, checkpoint_record(checkpoint))
            except InvalidCheckpoint as exc:
                return str(exc)
            return None

    with get_database(current_app).snapshot_session() as session:
        result = verify_database(session, check_signature=check)
    if not result.ok:
        click.echo(str(result.broken), err=True)
        raise SystemExit(1)
    signed = (
        f", {result.signatures} signatures verified"
        if key is not None
        else " (signatures not checked: no key given or configured)"
    )
    click.echo(
        f"audit chain OK: {result.checked} events, head {result.last_hash[:16]}; "
        f"{result.checkpoints} checkpoints match{signed}"
    )


def _database_key(public_key: Path | None) -> Ed25519PublicKey | None:
    if public_key is not None:
        return load_public_key(public_key)
    configured = current_app.config.get("AUDIT_SIGNING_KEY_FILE")
    return load_signing_key(configured).public_key() if configured else None


@audit_cli.command("export")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="jsonl", show_default=True)
@click.option("--since", type=TIME, help="Events at or after this time (UTC unless given).")
@click.option("--until", type=TIME, help="Events before this time.")
@click.option("--person", help="Events by or about this email.")
@click.option("--entitlement", help="Events about this entitlement id.")
@click.option("--action", help="Events with this action (a glob such as grant.* works).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write here instead of standard output.")  # fmt: skip
@with_appcontext
@needs_migrated_database
def export_command(
    fmt: str,
    since: datetime | None,
    until: datetime | None,
    person: str | None,
    entitlement: str | None,
    action: str | None,
    output: Path | None,
) -> None:
    """Export the trail (streamed). JSON Lines can be verified offline with `audit verify`."""
    flt = ExportFilter(since, until, person, entitlement, action)
    show_progress = output is not None and sys.stderr.isatty()
    database = get_database(current_app)
    # The export itself is audited first (as the web download is), so who took what shows up.
    with database.session() as session:
        AuditLog().append(
            session,
            EventContext(
                actor=f"cli:{getpass.getuser()}",
                client="cli",
                policy_version=get_policy(current_app).version,
            ),
            NewEvent(
                "audit.export",
                target="audit-trail",
                decision="allow",
                details={"format": fmt, "filters": flt.describe()},
            ),
        )
    with database.snapshot_session() as session, _open(output) as out:
        if not show_progress:
            for chunk in export(session, as_format(fmt), flt, now=utcnow()):
                out.write(chunk)
        else:
            total = count_events(session, flt)
            with click.progressbar(length=total, label="exporting", file=sys.stderr) as bar:

                def advance(n: int) -> None:
                    bar.update(n)

                for chunk in export(session, as_format(fmt), flt, now=utcnow(), progress=advance):
                    out.write(chunk)
    if output is not None:
        click.echo(f"wrote {output}", err=True)


@contextmanager
def _open(output: Path | None) -> Iterator[IO[str]]:
    if output is None:
        yield sys.stdout
        return
    with open(output, "w", encoding="utf-8", newline="") as handle:
        yield handle


@audit_cli.command("report")
@click.option("--since", type=TIME, required=True)
@click.option("--until", type=TIME, required=True)
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "html"]), default="html", show_default=True
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path))
@with_appcontext
@needs_migrated_database
def report_command(since: datetime, until: datetime, fmt: str, output: Path | None) -> None:
    """Per person and per role: grants, sessions, approvals, revocations, end dates kept."""
    if until <= since:
        raise click.BadParameter("--until must be after --since", param_hint="--until")
    with get_database(current_app).snapshot_session() as session:
        report = build_report(session, since, until, now=utcnow())
    text = report_csv(report) if fmt == "csv" else report_html(report)
    with _open(output) as out:
        out.write(text)
    if report.overstays:
        click.echo(
            f"FINDING: {len(report.overstays)} case(s) of access held after an end date", err=True
        )


@audit_cli.command("keygen")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def keygen_command(directory: Path) -> None:
    """Create an Ed25519 key pair for signing checkpoints (private key 0600)."""
    try:
        private, public = generate_key_pair(directory)
    except BrokerError as exc:
        raise click.ClickException(exc.explain()) from exc
    click.echo(f"private key: {private}  (set AUDIT_SIGNING_KEY_FILE to this path)")
    click.echo(f"public key:  {public}  (give this to auditors for `broker audit verify`)")
