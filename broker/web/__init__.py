"""HTTP surface: thin blueprints over the services."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register every blueprint and the error handlers."""
    from broker import metrics
    from broker.auth import oidc
    from broker.web import (
        activity,
        api,
        audit_export,
        errors,
        health,
        httpmetrics,
        oauth,
        pagetext,
        proxies,
        security,
        ui,
        ui_admin,
        ui_audit,
    )

    proxies.init_app(app)
    httpmetrics.init_app(app)
    errors.init_app(app)
    security.init_app(app)
    pagetext.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(oidc.bp)
    app.register_blueprint(ui.bp)
    app.register_blueprint(ui_admin.bp)
    app.register_blueprint(ui_audit.bp)
    oauth.init_app(app)
    app.register_blueprint(audit_export.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(activity.bp)
