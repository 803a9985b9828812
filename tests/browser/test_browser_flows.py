"""End to end in Chromium: sign in, request, credentials that work on AWS, approval by another
person, an admin revoke seen by the engineer and in the audit trail, and logout."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from browserbed import Site
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def _request(
    page: object,
    entitlement: str,
    reason: str,
    duration: str | None = None,
    profile: str | None = None,
) -> None:
    """Open the entitlement's form from its row (its options, or "Ask for approval"), submit."""
    page.goto("/")  # type: ignore[attr-defined]
    row = page.locator(f'tr[data-entitlement="{entitlement}"]')  # type: ignore[attr-defined]
    row.get_by_role("link", name=re.compile(r"^(Options|Ask for approval|Get credentials)")).click()
    page.get_by_label("Reason").fill(reason)  # type: ignore[attr-defined]
    if duration:
        page.get_by_label("How long").select_option(duration)  # type: ignore[attr-defined]
    if profile:
        page.get_by_label("Profile name").fill(profile)  # type: ignore[attr-defined]
    page.locator("main form button[type=submit]").click()  # type: ignore[attr-defined]


def test_engineer_signs_in_requests_gets_working_credentials_and_logs_out(site: Site) -> None:
    page = site.sign_in("dev")
    expect(page.get_by_role("heading", level=1, name="My access")).to_be_visible()
    expect(page.locator('tr[data-entitlement="app-read"]')).to_contain_text("Read the app bucket")
    expect(page.locator('li[data-entitlement="app-admin"]')).to_be_visible()  # and why not
    expect(page.get_by_text("Signed in as dev@example.com")).to_be_visible()
    site.shot(page, "01-home")

    page.locator('tr[data-entitlement="app-read"]').get_by_role("link", name="Options").click()
    expect(page.get_by_label("How long")).to_have_value("1h")  # not the longest (4h)
    site.shot(page, "02-request-form")

    # No approval needed: one step from the form to the credentials.
    _request(page, "app-read", "JIRA-42: read the logs", "1h", profile="work")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Credentials for app-read")
    expect(page.locator("time.countdown").first).to_contain_text("left")  # our JS runs
    site.shot(page, "03-credentials")
    key = page.locator("#aws-access-key-id").inner_text()
    secret = page.locator("#aws-secret-access-key").inner_text()
    token = page.locator("#aws-session-token").inner_text()
    sts = site.moto.client("sts", access_key_id=key, secret_access_key=secret, session_token=token)
    identity = sts.get_caller_identity()
    assert identity["Arn"].split("/")[1] == site.roles["read"].rsplit("/", 1)[1]
    expect(page.locator("#snippet-credentials-file")).to_contain_text("[work]")
    expect(page.locator("#snippet-cli")).to_contain_text("broker creds app-read --profile work")
    console = page.get_by_role("link", name="Open AWS console").get_attribute("href") or ""
    assert parse_qs(urlsplit(console).query)["SigninToken"] == ["stub-token"]
    asked = [r for r in site.federation.requests if r.get("Action") == ["getSigninToken"]][-1]
    assert 900 <= int(asked["SessionDuration"][0]) <= 3600

    page.goto("/")
    expect(page.locator(".card time.countdown")).to_contain_text(re.compile(r"\d+m \d\ds left"))
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{site.url}/signed-out")
    expect(page.get_by_role("heading", name="You are signed out")).to_be_visible()
    site.shot(page, "04-signed-out")
    page.goto("/")
    assert page.url.startswith(site.idp.issuer)  # the provider session ended too


def test_approval_needs_a_second_person(site: Site) -> None:
    requester = site.sign_in("sam")
    _request(requester, "app-admin", "INC-7: restart the workers", "1h")
    expect(requester.get_by_role("heading", name="Request pending approval")).to_be_visible()
    requester.goto("/approvals")
    expect(requester.get_by_text("Nothing is waiting for you.")).to_be_visible()
    expect(requester.get_by_text("you cannot approve your own request")).to_be_visible()
    expect(requester.get_by_role("button", name="Approve")).to_have_count(0)

    approver = site.sign_in("sec")
    approver.get_by_role("link", name="Approvals").click()
    card = approver.locator(".card", has_text="sam@example.com asks for app-admin")
    expect(card).to_contain_text("INC-7: restart the workers")
    card.get_by_label("Comment").fill("ok, INC-7 is real")
    site.shot(approver, "05-approvals")
    card.get_by_role("button", name="Approve").click()
    expect(approver.get_by_role("status")).to_contain_text("Request approved")
    expect(approver.get_by_role("status")).to_have_class(re.compile(r"\bsuccess\b"))

    requester.goto("/")
    expect(requester.locator(".card", has_text="app-admin")).to_contain_text("left")


def test_admin_revoke_removes_the_grant_and_shows_in_the_audit(site: Site) -> None:
    engineer = site.sign_in("dev")
    _request(engineer, "app-read", "JIRA-9")
    expect(engineer.locator("#aws-access-key-id")).to_be_visible()
    engineer.goto("/")
    expect(engineer.locator(".card", has_text="app-read")).to_be_visible()

    admin = site.sign_in("ada")
    admin.get_by_role("link", name="Admin").click()
    row = admin.locator("tr[data-grant]", has_text="dev@example.com")
    expect(row).to_contain_text("app-read")
    expect(admin.locator("section", has_text="Live AWS sessions")).to_contain_text(
        "dev@example.com"
    )
    site.shot(admin, "06-admin")
    row.get_by_role("link", name=re.compile("^Revoke")).click()  # a confirmation step first
    expect(admin.get_by_role("heading", level=1)).to_have_text(
        "Revoke app-read of dev@example.com?"
    )
    admin.get_by_label("Reason").fill("laptop lost")
    admin.get_by_role("button", name="Revoke grant").click()
    expect(admin.get_by_role("status")).to_contain_text("Grant revoked")
    expect(admin.locator("section", has_text="Revocations pending on AWS")).to_contain_text(
        site.roles["read"]
    )

    engineer.reload()
    expect(engineer.locator(".card", has_text="app-read")).to_have_count(0)
    expect(engineer.get_by_text("You hold no active grants.")).to_be_visible()

    admin.get_by_role("link", name="Audit").click()
    admin.get_by_label("Action").fill("grant.revoked")
    admin.get_by_role("button", name="Search").click()
    event = admin.locator('tr[data-action="grant.revoked"]')
    expect(event).to_contain_text("ada@example.com")
    expect(event).to_contain_text("laptop lost")
    href = admin.get_by_role("link", name="CSV").get_attribute("href") or ""
    assert href.startswith("/audit/export?format=csv") and "action=grant.revoked" in href
    site.shot(admin, "07-audit")
