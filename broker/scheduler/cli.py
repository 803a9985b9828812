"""`broker scheduler`: run the scheduler process until SIGTERM or SIGINT; SIGHUP rereads policy."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click
from flask import current_app
from flask.cli import with_appcontext

from broker.errors import BrokerError


@click.command("scheduler")
@click.option(
    "--sweep-seconds",
    type=float,
    default=None,
    help="Seconds between sweeps (default: BROKER_SCHEDULER_SWEEP_SECONDS, 5).",
)
@with_appcontext
def scheduler_command(sweep_seconds: float | None) -> None:
    """End grants on time and put revocations in place on AWS (never run inside web workers)."""
    from broker.scheduler.core import Scheduler

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        scheduler = Scheduler(app, sweep_seconds=sweep_seconds)
        scheduler.start()
    except BrokerError as exc:
        raise click.ClickException(exc.explain()) from exc
    done, wake, reread = threading.Event(), threading.Event(), threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        click.echo(f"scheduler: {signal.Signals(signum).name} received, stopping", err=True)
        done.set()
        wake.set()

    def _reread(_signum: int, _frame: FrameType | None) -> None:
        # The check reads files and writes to the database: do it in the loop, not in here.
        reread.set()
        wake.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _reread)
    click.echo(f"scheduler running as {scheduler.lease.holder}", err=True)
    while not done.is_set():
        wake.wait(1.0)
        wake.clear()
        if reread.is_set() and not done.is_set():
            reread.clear()
            click.echo("scheduler: SIGHUP received, checking the policy files", err=True)
            scheduler.check_policy(force=True)
        if scheduler.stopped.is_set():
            raise click.ClickException("the scheduler stopped (its lease was taken over)")
    scheduler.stop()
