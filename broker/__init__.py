"""broker: a zero-trust temporary credential broker for AWS."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(
    test_config: dict[str, Any] | None = None, *, instance_path: str | None = None
) -> Flask:
    """Assemble the web application; every part wires itself with `init_app`.

    The instance folder (where `broker.toml` is read) is `instance_path`, else
    `BROKER_INSTANCE_PATH`, else Flask's default for the package.
    """
    # Imported here, not above: the engineer's CLI lives in this package and must not load Flask.
    from flask import Flask

    from broker import config, db, logs, policy_store, web

    app = Flask(
        __name__,
        instance_relative_config=True,
        instance_path=config.instance_folder(instance_path),
    )
    os.makedirs(app.instance_path, exist_ok=True)
    config.load_config(app, test_config)
    logs.init_app(app)
    db.init_app(app)
    policy_store.init_app(app)
    web.init_app(app)
    return app
