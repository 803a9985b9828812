"""HTTP surface: thin blueprints over the services."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register every blueprint and the error handlers."""
    from broker.web import health

    app.register_blueprint(health.bp)
