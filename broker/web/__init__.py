"""HTTP surface: thin blueprints over the services."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register every blueprint and the error handlers."""
    from broker.web import api, errors, health

    errors.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
