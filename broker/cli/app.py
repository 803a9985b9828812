"""The server's app for an admin command, built from the same configuration as the server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from flask import Flask


def server_app(ctx: click.Context) -> Flask:
    """The `broker` group's app (Flask's ScriptInfo), or one from `create_app()` when run alone.

    A configuration error becomes a ClickException that explains the setting to fix.
    """
    from flask.cli import ScriptInfo

    from broker.errors import BrokerError

    info = ctx.find_object(ScriptInfo)
    if info is not None and info.create_app is not None:
        return info.load_app()
    from broker import create_app

    try:
        return create_app()
    except BrokerError as exc:
        raise click.ClickException(exc.explain()) from exc
