"""Sign-in in Chromium at `oidc-provider` shaped like Keycloak and Microsoft Entra ID."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from browserbed import Site
from conftest import ENTRA_GROUP
from playwright.sync_api import expect

from broker.db import get_database
from broker.models import AuditEvent

# Keycloak's realm roles by dotted path, and Entra's groups (object ids) with app roles.
GROUPS_CLAIM = "realm_access.roles,groups,roles"


@pytest.fixture
def site_config() -> dict[str, Any]:
    return {"OIDC_GROUPS_CLAIM": GROUPS_CLAIM}


def test_keycloak_realm_roles_are_groups(site: Site) -> None:
    page = site.sign_in("kc")
    expect(page.get_by_text("Signed in as kc@example.com")).to_be_visible()
    expect(page.locator('tr[data-entitlement="app-read"]')).to_contain_text("Read the app bucket")
    site.shot(page, "10-keycloak-shape")


def test_entra_object_ids_and_app_roles_are_groups(site: Site) -> None:
    page = site.sign_in("entra")
    expect(page.locator('tr[data-entitlement="app-read"]')).to_contain_text("Read the app bucket")
    [event] = _sign_ins(site)
    assert sorted(event.details["groups"]) == sorted([ENTRA_GROUP, "developers"])


def test_entra_group_overage_is_refused_with_its_cause(site: Site) -> None:
    context = site.browser.new_context(base_url=site.url)
    site.contexts.append(context)
    page = context.new_page()
    page.goto("/")
    page.fill("input[name=login]", "entra-big")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{site.url}/auth/callback*")
    expect(page.locator("main")).to_contain_text("too many of them")
    site.shot(page, "11-entra-overage-refused")
    assert _sign_ins(site) == []


def _sign_ins(site: Site) -> list[AuditEvent]:
    with site.app.app_context(), get_database().session() as session:
        query = sa.select(AuditEvent).where(AuditEvent.action == "auth.sign_in")
        return list(session.scalars(query))
