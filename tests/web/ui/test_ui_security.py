"""Headers, CSRF, POST-only state changes, rate limits, and no inline script on any page."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from uibed import ADMIN, DEV, Ui, csrf_of, make_ui

from broker.db import get_database
from broker.models import Grant

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self' {issuer}; object-src 'none'"
)


class _InlineFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k for k, _ in attrs}
        if tag == "script" and "src" not in names:
            self.problems.append("inline <script>")
        if tag == "style":
            self.problems.append("inline <style>")
        if "style" in names:
            self.problems.append(f"style= on <{tag}>")
        self.problems += [f"{n}= on <{tag}>" for n in names if n.startswith("on")]
        for name, value in attrs:
            loads = name == "src" or (tag == "link" and name == "href")
            if loads and (value or "").startswith(("http", "//")):
                self.problems.append(f"external asset {name}={value}")

    def handle_endtag(self, tag: str) -> None:
        pass


def _inline(page: str) -> list[str]:
    finder = _InlineFinder()
    finder.feed(page)
    return finder.problems


def test_security_headers_on_pages_and_api(ui: Ui) -> None:
    client = ui.signed_in()
    for path in ("/", "/signed-out", "/api/v1/openapi.json", "/no-such-page"):
        response = client.get(path)
        headers = response.headers
        assert headers["Content-Security-Policy"] == CSP.format(issuer=ui.idp.issuer), path
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Frame-Options"] == "DENY"
        assert "Strict-Transport-Security" not in headers  # plain http on loopback


def test_no_inline_script_style_or_external_assets(ui: Ui) -> None:
    dev = ui.signed_in(DEV)
    admin = ui.signed_in(ADMIN)
    form = dev.get("/request/app-read").get_data(as_text=True)
    dev.post("/request/app-read", data={"csrf_token": csrf_of(form)})
    home = dev.get("/").get_data(as_text=True)
    creds = dev.post("/credentials/app-read", data={"csrf_token": csrf_of(home)})
    pages = {
        "home": home,
        "request": form,
        "credentials": creds.get_data(as_text=True),
        "approvals": dev.get("/approvals").get_data(as_text=True),
        "admin": admin.get("/admin").get_data(as_text=True),
        "audit": admin.get("/audit").get_data(as_text=True),
        "error": dev.get("/admin").get_data(as_text=True),
        "signed-out": dev.get("/signed-out").get_data(as_text=True),
    }
    for name, page in pages.items():
        assert _inline(page) == [], name
        assert '<main id="main"' in page and "<h1" in page, name
    static = Path(__file__).resolve().parents[3] / "broker" / "static"
    assert "http" not in (static / "broker.css").read_text()
    assert "http" not in (static / "broker.js").read_text()
    assert ui.signed_in().get("/static/broker.js").status_code == 200


def test_cross_site_post_without_csrf_token_changes_nothing(ui: Ui) -> None:
    dev = ui.signed_in(DEV)
    form = dev.get("/request/app-read").get_data(as_text=True)
    dev.post("/request/app-read", data={"csrf_token": csrf_of(form)})
    grant_id = _only_grant(ui).id
    admin = ui.signed_in(ADMIN)
    token = csrf_of(admin.get("/admin").get_data(as_text=True))
    # what a page on evil.example can make the admin's browser send: the cookie, no token
    forged = admin.post(
        f"/admin/grants/{grant_id}/revoke",
        data={"reason": "pwned"},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert forged.status_code == 403
    assert "another site" in html.unescape(forged.get_data(as_text=True))
    # the token alone does not help a cross-site request either
    forged = admin.post(
        f"/admin/grants/{grant_id}/revoke",
        data={"reason": "pwned", "csrf_token": token},
        headers={"Origin": "https://evil.example"},
    )
    assert forged.status_code == 403
    # same site, but no token (or someone else's)
    for data in ({"reason": "x"}, {"reason": "x", "csrf_token": "guess"}):
        response = admin.post(f"/admin/grants/{grant_id}/revoke", data=data)
        assert response.status_code == 403
        assert "did not come from a broker page" in html.unescape(response.get_data(as_text=True))
    assert _only_grant(ui).status == "active"
    ok = admin.post(
        f"/admin/grants/{grant_id}/revoke",
        data={"reason": "ok", "csrf_token": token, "confirm": "yes"},
        headers={"Origin": "http://localhost"},
    )
    assert ok.status_code == 302 and _only_grant(ui).status == "revoked"


def test_csrf_token_is_per_session(ui: Ui) -> None:
    one, two = ui.signed_in(DEV), ui.signed_in(DEV)
    token_one = csrf_of(one.get("/").get_data(as_text=True))
    token_two = csrf_of(two.get("/").get_data(as_text=True))
    assert token_one != token_two
    response = two.post("/logout", data={"csrf_token": token_one})
    assert response.status_code == 403


STATE_CHANGES = [
    "/logout",
    "/credentials/app-read",
    "/request/app-read",
    "/grants/abc/revoke",
    "/approvals/abc/approve",
    "/approvals/abc/deny",
    "/admin/grants/abc/revoke",
    "/admin/people/abc/cut-off",
    "/admin/people/abc/restore",
]


def test_state_change_by_get_is_refused(ui: Ui) -> None:
    client = ui.signed_in(ADMIN)
    for path in STATE_CHANGES:
        response = client.get(path)
        if path == "/request/app-read":  # GET shows the form; only the POST changes state
            assert response.status_code == 200 and 'method="post"' in response.get_data(
                as_text=True
            )
            continue
        assert response.status_code == 405, path
        assert "POST" in response.headers["Allow"]
        assert "never by following a link" in html.unescape(response.get_data(as_text=True))


def test_sign_in_is_rate_limited(
    database: Any, moto_server: Any, stub_issuer: Any, tmp_path: Path
) -> None:
    ui = make_ui(database, moto_server, stub_issuer, tmp_path, RATE_LIMIT_SIGNIN_PER_MINUTE=3)
    try:
        client = ui.browser()
        statuses = [client.get("/login").status_code for _ in range(3)]
        assert statuses == [302, 302, 302]
        refused = client.get("/login")
        if refused.status_code == 302:  # the minute turned over between requests
            refused = client.get("/login")
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) <= 60
        assert "Too many attempts" in refused.get_data(as_text=True)
        assert client.get("/auth/callback?state=x").status_code in (401, 429)
    finally:
        ui.app.extensions["broker.db"].dispose()


def test_credential_issuance_is_rate_limited(
    database: Any, moto_server: Any, stub_issuer: Any, tmp_path: Path
) -> None:
    ui = make_ui(database, moto_server, stub_issuer, tmp_path, RATE_LIMIT_ISSUE_PER_MINUTE=2)
    try:
        client = ui.signed_in(DEV)
        token = csrf_of(client.get("/").get_data(as_text=True))
        statuses = [
            client.post("/credentials/app-read", data={"csrf_token": token}).status_code
            for _ in range(3)
        ]
        assert statuses[:2] == [200, 200] or statuses[1:] == [200, 200]
        assert 429 in statuses
    finally:
        ui.app.extensions["broker.db"].dispose()


def test_rate_limit_window_is_shared_by_workers(ui: Ui) -> None:
    """Two app instances (two workers) over one database share one counter."""
    from broker.errors import TooManyRequests
    from broker.web.security import rate_limit

    with ui.app.test_request_context():
        rate_limit("test:shared", limit=2, window_seconds=3600)
        rate_limit("test:shared", limit=2, window_seconds=3600)
    other = make_ui_twin(ui)
    with other.test_request_context(), pytest.raises(TooManyRequests):
        rate_limit("test:shared", limit=2, window_seconds=3600)
    other.extensions["broker.db"].dispose()


def make_ui_twin(ui: Ui) -> Any:
    from broker import create_app

    config = {
        k: ui.app.config[k]
        for k in ("ENV", "TESTING", "DATABASE_URL", "POLICY_DIR", "OIDC_ISSUER", "OIDC_CLIENT_ID")
    }
    return create_app(config)


def _only_grant(ui: Ui) -> Grant:
    with ui.app.app_context(), get_database().session() as session:
        return session.scalars(sa.select(Grant)).one()


def test_error_pages_are_html_and_json_for_the_api(ui: Ui) -> None:
    client = ui.browser()
    page = client.get("/nowhere")
    assert page.status_code == 404 and page.mimetype == "text/html"
    api = client.get("/api/v1/nowhere")
    assert api.status_code == 404 and api.is_json
    assert re.search(r"<h1[^>]*>Not found</h1>", page.get_data(as_text=True))
