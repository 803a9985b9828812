"""`broker activity ...` (what credentials did, detections, one ingestion pass now) and
`broker keys report` (the long-lived IAM user keys the broker replaces, read-only)."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from broker.activity.queries import (
    ActivityFilter,
    ActivityRow,
    DetectionRow,
    find_activity,
    find_detections,
)
from broker.db import get_database
from broker.migrate import needs_migrated_database
from broker.policy import LoadedPolicy, PolicyLoadError

FORMATS = ("text", "json", "csv")


class _Time(click.ParamType):  # type: ignore[type-arg]
    """An ISO 8601 date or time; without a zone it is UTC."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is not a date or time like 2026-05-01 or 2026-05-01T12:00Z")
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


TIME = _Time()


@click.group("activity")
def activity_cli() -> None:
    """What broker-issued credentials did (from CloudTrail), and what the detections caught."""


def _filters(function: Any) -> Any:
    options = [
        click.option("--person", default="", help="A person's email."),
        click.option("--grant", default="", help="A grant id."),
        click.option("--session", default="", help="A session id or access key id."),
        click.option("--since", type=TIME, help="At or after this time (UTC unless given)."),
        click.option("--until", type=TIME, help="Before this time."),
        click.option("--limit", type=click.IntRange(1, 5000), default=200, show_default=True),
        click.option(
            "--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@activity_cli.command("show")
@_filters
@click.option("--flagged", is_flag=True, help="Only calls made after their grant had ended.")
@with_appcontext
@needs_migrated_database
def show_command(
    person: str,
    grant: str,
    session: str,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    fmt: str,
    flagged: bool,
) -> None:
    """What a person, grant or session did, newest first (calls after the grant ended: LATE)."""
    wanted = ActivityFilter(person, grant, session, since, until, flagged, limit)
    with get_database(current_app).read_session() as db:
        rows = find_activity(db, wanted)
    click.echo(_render_activity(rows, fmt), nl=False)


@activity_cli.command("detections")
@_filters
@with_appcontext
@needs_migrated_database
def detections_command(
    person: str,
    grant: str,
    session: str,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    fmt: str,
) -> None:
    """What the detection rules caught, and what the broker did about it."""
    wanted = ActivityFilter(person, grant, session, since, until, False, limit)
    with get_database(current_app).read_session() as db:
        rows = find_detections(db, wanted)
    click.echo(_render_detections(rows, fmt), nl=False)


@activity_cli.command("ingest")
@click.option("--queue/--no-queue", default=True, help="Read the SQS queue (when configured).")
@click.option("--scan/--no-scan", default=True, help="List the bucket from the cursors.")
@with_appcontext
@needs_migrated_database
def ingest_command(queue: bool, scan: bool) -> None:
    """Read new CloudTrail files now (as the scheduler does), once across schedulers."""
    from broker.activity.jobs import build_ingestor
    from broker.clock import DatabaseClock

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    holder = f"cli:{socket.gethostname()}:{os.getpid()}"
    ingestor = build_ingestor(app, clock=DatabaseClock(get_database(app)), holder=holder)
    if ingestor is None:
        raise click.ClickException(
            "No trail to read: set BROKER_CLOUDTRAIL_BUCKET (see docs/activity.md)."
        )
    files = (ingestor.poll_queue().files if queue else []) + (ingestor.scan().files if scan else [])
    read = [f for f in files if f.status in ("done", "malformed")]
    click.echo(
        f"{len(read)} file(s) read: {sum(f.records for f in read)} record(s), "
        f"{sum(f.attributed for f in read)} attributed, "
        f"{sum(f.status == 'malformed' for f in read)} malformed, "
        f"{sum(len(f.detections) for f in read)} detection(s), "
        f"{sum(f.responses for f in read)} response(s)"
    )
    for failed in (f for f in files if f.status in ("failed", "malformed")):
        click.echo(f"  {failed.status}: {failed.key}: {failed.error}", err=True)
    if any(f.responses for f in read):
        click.echo("Revoked grants' denies are put on AWS by the scheduler's next pass.")


def _render_activity(rows: Sequence[ActivityRow], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([r.as_dict() for r in rows], indent=2) + "\n"
    if fmt == "csv":
        return _csv([r.as_dict() for r in rows])
    if not rows:
        return "No activity matches.\n"
    lines = []
    for r in rows:
        late = " LATE" if r.after_grant_end else ""
        error = f" [{r.error_code}]" if r.error_code else ""
        request = " ".join(f"{k}={v}" for k, v in sorted(r.summary.items()))
        lines.append(
            f"{r.event_time:%Y-%m-%d %H:%M:%S}Z  {r.person}  {r.action}{error}{late}  "
            f"{r.region} {r.account}  from {r.source_ip or '?'}  "
            f"grant {r.grant_id or '-'} ({r.entitlement or '-'})"
            + (f"  {request}" if request else "")
        )
    return "\n".join(lines) + "\n"


def _render_detections(rows: Sequence[DetectionRow], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([r.as_dict() for r in rows], indent=2) + "\n"
    if fmt == "csv":
        return _csv([r.as_dict() for r in rows])
    if not rows:
        return "No detections match.\n"
    return (
        "\n".join(
            f"{r.detected_at:%Y-%m-%d %H:%M:%S}Z  [{r.severity}] {r.rule}  {r.person}  "
            f"{r.action}  → {r.response}: {r.outcome}  ({'; '.join(r.reasons)})"
            for r in rows
        )
        + "\n"
    )


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in row.items()}
        )
    return out.getvalue()


# -- keys -----------------------------------------------------------------------------------------


@click.group("keys")
def keys_cli() -> None:
    """The long-lived IAM user access keys the broker replaces (read-only)."""


@keys_cli.command("report")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("table", "csv", "json")),
    default="table",
    show_default=True,
)
@click.option(
    "--role-arn",
    "role_arns",
    multiple=True,
    help="A read-only IAM role to assume in each other account in scope (repeatable); the "
    "broker's own account is always included.",
)
@click.option(
    "--email-domain",
    help="Map a user name without @ to NAME@DOMAIN (after an email tag, before nothing).",
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here.")
@with_appcontext
def keys_report_command(
    fmt: str, role_arns: tuple[str, ...], email_domain: str | None, output: Path | None
) -> None:
    """IAM users with access keys: age, last use, the person they look like, what to do.

    Read-only: it lists users, keys, tags and last use; it never changes or deletes a key.
    """
    from broker.activity.keys import KeyInventory, PersonMapper, as_csv, as_json, as_table
    from broker.models import utcnow
    from broker.policy_store import get_policy

    accounts = _iam_clients(role_arns)
    now = utcnow()
    try:
        with get_database(current_app).read_session() as db:
            mapper = PersonMapper(get_policy().evaluator, db, email_domain=email_domain, now=now)
            findings = KeyInventory(accounts, mapper, clock=lambda: now).report()
    except Exception as exc:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError | BotoCoreError):
            raise click.ClickException(f"IAM could not be read: {exc}") from None
        raise
    text = {"table": as_table, "csv": as_csv, "json": as_json}[fmt](findings)
    if output is not None:
        output.write_text(text, encoding="utf-8")
        click.echo(f"{len(findings)} key(s) written to {output}", err=True)
    else:
        click.echo(text, nl=False)


def _iam_clients(role_arns: Sequence[str]) -> dict[str, Any]:
    """IAM clients by account: the broker's own, and one per assumed read-only role."""
    from broker.aws import make_client, parse_role_arn

    cfg = current_app.config
    common = {
        "region": cfg["AWS_REGION"],
        "endpoint_url": cfg.get("AWS_ENDPOINT_URL"),
        "timeout": float(cfg.get("STS_TIMEOUT_SECONDS", 10.0)),
    }
    sts = make_client("sts", **common)
    own = str(sts.get_caller_identity()["Account"])
    clients: dict[str, Any] = {own: make_client("iam", **common)}
    for arn in role_arns:
        try:
            account = parse_role_arn(arn).account
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--role-arn") from None
        creds = sts.assume_role(RoleArn=arn, RoleSessionName="broker-keys-report")["Credentials"]
        clients[account] = make_client(
            "iam",
            **common,
            access_key_id=creds["AccessKeyId"],
            secret_access_key=creds["SecretAccessKey"],
            session_token=creds["SessionToken"],
        )
    return clients


# -- `broker policy test` ------------------------------------------------------------------------


def run_detection_tests(loaded: LoadedPolicy, directory: Path, verbose: bool) -> list[bool]:
    """Run DIRECTORY/tests/detections/*.yaml, printing each case; return pass/fail per case."""
    from broker.activity.rule_tests import (
        detection_tests_dir,
        load_detection_cases,
        run_detection_cases,
    )

    try:
        cases = load_detection_cases(detection_tests_dir(directory))
    except PolicyLoadError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        raise click.exceptions.Exit(1) from None
    results = run_detection_cases(loaded.policy, loaded.evaluator, cases)
    for result in results:
        click.echo(f"{'PASS' if result.passed else 'FAIL'}  {result.where}  {result.case.name}")
        if result.problem:
            click.echo(f"      {result.problem}")
        elif verbose:
            click.echo(f"      fired: {', '.join(result.fired) or 'none'}")
    return [r.passed for r in results]
