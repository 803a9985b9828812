"""The web UI in Chromium on a phone (375 px) and a desktop (1280 px): no page scrolls
sideways, grant ends read as a time and a countdown, one click to credentials, navigation by
role, confirmations before revoking and cutting off, error pages in the layout with the request
id, audit paging with the export's glob filter, the compliance report, a visible focus ring.

The pages' logic is tested on SQLite and PostgreSQL in tests/web/ui; here the browser is the
subject, so one backend (SQLite) is enough. Screenshots of each page at both widths go to
artifacts/screenshots/.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from browserbed import Site
from playwright.sync_api import expect

from broker.audit import EventContext, NewEvent
from broker.db import get_database
from broker.services import grant_service

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("db_url", ["sqlite"], indirect=True),
]

PHONE: dict[str, Any] = {
    "viewport": {"width": 375, "height": 812},
    "is_mobile": True,
    "has_touch": True,
    "device_scale_factor": 2,
}
DESKTOP: dict[str, Any] = {"viewport": {"width": 1280, "height": 900}}
COUNTDOWN = r"(\d+h \d\dm|\d+m) \d\ds left"


def _scroll_width(page: Any) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth"))


def _one_click_credentials(page: Any, entitlement: str = "app-read") -> None:
    """From the home page's row, one button to the credentials (no approval needed)."""
    page.goto("/")
    row = page.locator(f'tr[data-entitlement="{entitlement}"]')
    row.get_by_role("button", name="Get credentials").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Credentials for {entitlement}")


def _ask_for_approval(page: Any, reason: str) -> None:
    page.goto("/")
    page.locator('tr[data-entitlement="app-admin"]').get_by_role(
        "link", name="Ask for approval"
    ).click()
    page.get_by_label("Reason").fill(reason)
    page.get_by_role("button", name="Ask for approval").click()
    expect(page.get_by_role("heading", name="Request pending approval")).to_be_visible()


def _nav_links(page: Any) -> list[str]:
    return [t.strip() for t in page.locator('nav[aria-label="Main"] a').all_inner_texts()]


def _forget_expected_errors(site: Site) -> None:
    """Error pages are meant to answer 4xx/5xx; Chromium logs each one as a console error."""
    site.problems[:] = [p for p in site.problems if "the server responded with a status" not in p]


def test_no_page_is_wider_than_the_screen(site: Site) -> None:
    """At 375 px every main page fits (tables scroll inside their own box); 1280 px too."""
    _one_click_credentials(site.sign_in("dev"))
    _ask_for_approval(site.sign_in("sam"), "INC-7: restart the workers, then read the logs")
    pages = {
        "dev": ["/", "/request/app-read"],
        "sec": ["/approvals"],
        "ada": ["/admin", "/audit", "/audit/report"],
    }
    widths: dict[str, int] = {}
    for name, options in (("375", PHONE), ("1280", DESKTOP)):
        limit = options["viewport"]["width"]
        for who, paths in pages.items():
            page = site.sign_in(who, **options)
            for path in paths:
                page.goto(path)
                expect(page.locator("main h1")).to_be_visible()
                widths[f"{path} @{name}"] = _scroll_width(page)
                slug = path.strip("/").replace("/", "-") or "home"
                site.shot(page, f"ux-{slug}-{name}")
            if who == "ada":
                page.goto("/admin")
                page.get_by_role("link", name=re.compile("^Revoke")).first.click()
                widths[f"revoke confirmation @{name}"] = _scroll_width(page)
                site.shot(page, f"ux-admin-confirm-{name}")
        too_wide = {k: v for k, v in widths.items() if k.endswith(f"@{name}") and v > limit}
        assert not too_wide, f"wider than {limit} px: {too_wide}"


def test_grant_ends_read_as_a_time_and_a_live_countdown(site: Site) -> None:
    page = site.sign_in("dev", **PHONE)
    page.goto("/request/app-read")
    expect(page.get_by_label("How long")).to_have_value("1h")  # not the longest (4h)
    _one_click_credentials(page)
    expect(page.locator(".expiry .ends")).to_have_text(
        re.compile(rf"^These credentials expire \d{{4}}-\d\d-\d\d \d\d:\d\d UTC · {COUNTDOWN}$")
    )
    page.goto("/")
    card = page.locator(".card", has_text="app-read")
    expect(card.locator(".ends")).to_have_text(
        re.compile(rf"^Ends \d{{4}}-\d\d-\d\d \d\d:\d\d UTC · {COUNTDOWN}$")
    )
    countdown = card.locator("time.countdown")
    first = countdown.inner_text()
    expect(countdown).not_to_have_text(first, timeout=3000)  # our script keeps it running
    expect(countdown).to_have_text(re.compile(rf"^{COUNTDOWN}$"))
    site.shot(page, "ux-countdown-375")


def test_pending_request_in_one_duration_format(site: Site) -> None:
    requester = site.sign_in("sam")
    _ask_for_approval(requester, "INC-8")
    expect(requester.get_by_text("Who can approve: group security")).to_be_visible()
    approver = site.sign_in("sec")
    approver.get_by_role("link", name="Approvals").click()
    card = approver.locator(".card", has_text="sam@example.com asks for app-admin")
    expect(card).to_contain_text("For 1h.")
    expect(card).not_to_contain_text("minutes")


def test_navigation_shows_only_the_pages_each_person_can_use(site: Site) -> None:
    assert _nav_links(site.sign_in("dev")) == ["My access"]
    assert _nav_links(site.sign_in("sec")) == ["My access", "Approvals"]
    assert _nav_links(site.sign_in("ada")) == ["My access", "Admin", "Audit"]


def test_revoke_and_cut_off_ask_for_confirmation(site: Site) -> None:
    _one_click_credentials(site.sign_in("dev"))
    sam = site.sign_in("sam")
    admin = site.sign_in("ada", **PHONE)
    admin.goto("/admin")
    row = admin.locator("tr[data-grant]", has_text="dev@example.com")
    row.get_by_role("link", name=re.compile("^Revoke")).click()
    expect(admin.get_by_role("heading", level=1)).to_have_text(
        "Revoke app-read of dev@example.com?"
    )
    expect(admin.locator(".confirm")).to_contain_text("1 live AWS session will be cut off")
    admin.get_by_role("link", name="Cancel").click()
    expect(admin.locator("tr[data-grant]", has_text="dev@example.com")).to_be_visible()

    row.get_by_role("link", name=re.compile("^Revoke")).click()
    admin.get_by_label("Reason").fill("laptop lost")
    admin.get_by_role("button", name="Revoke grant").click()
    expect(admin.get_by_role("status")).to_contain_text("Grant revoked")
    expect(admin.get_by_role("status")).to_have_class(re.compile(r"\bsuccess\b"))
    expect(admin.locator("tr[data-grant]", has_text="dev@example.com")).to_have_count(0)

    admin.locator('tr[data-person="sam@example.com"]').get_by_role(
        "link", name=re.compile("^Cut off")
    ).click()
    expect(admin.get_by_role("heading", level=1)).to_have_text("Cut off sam@example.com?")
    site.shot(admin, "ux-cut-off-confirm-375")
    confirm_url = admin.url
    admin.get_by_role("button", name="Cut off sam@example.com").click()  # no reason yet
    assert admin.url == confirm_url  # the browser asks for the required reason first
    admin.get_by_label(re.compile("^Reason")).fill("contract ended")
    admin.get_by_role("button", name="Cut off sam@example.com").click()
    expect(admin.get_by_role("status")).to_contain_text("Person cut off")
    response = sam.goto("/")
    assert response is not None and response.status == 403
    _forget_expected_errors(site)


def test_error_pages_keep_the_navigation_and_show_the_request_id(site: Site) -> None:
    def boom() -> str:
        raise RuntimeError("a bug")

    site.app.add_url_rule("/test-boom", view_func=boom)
    page = site.sign_in("ada", **PHONE)
    for path, status, title in (
        ("/nowhere", 404, "Not found"),
        ("/logout", 405, "Not allowed this way"),
        ("/test-boom", 500, "Something went wrong"),
    ):
        response = page.goto(path)
        assert response is not None and response.status == status, path
        expect(page.get_by_role("heading", level=1)).to_have_text(title)
        assert _nav_links(page) == ["My access", "Admin", "Audit"], path
        expect(page.locator("#request-id")).to_have_text(response.headers["x-request-id"])
        expect(page.locator("main")).not_to_contain_text("If you entered the URL manually")
        assert _scroll_width(page) <= 375
        site.shot(page, f"ux-error-{status}-375")
    _forget_expected_errors(site)


def _add_events(site: Site, count: int) -> None:
    with site.app.app_context():
        service = grant_service()
        with get_database().session() as session:
            for n in range(count):
                service.audit.append(
                    session,
                    EventContext(actor="robot@example.com", client="cli"),
                    NewEvent(
                        "grant.expire" if n % 2 else "credentials.issue",
                        target="app-read",
                        decision="allow",
                        details={"entitlement": "app-read", "n": n},
                    ),
                )


def test_audit_pages_and_filters_with_the_exports_globs(site: Site) -> None:
    _add_events(site, 60)
    page = site.sign_in("ada", **PHONE)
    page.get_by_role("link", name="Audit").click()
    rows = page.locator("tr[data-seq]")
    expect(rows).to_have_count(50)
    newest = int(rows.first.get_attribute("data-seq") or 0)
    page.get_by_role("link", name="Older events").click()
    expect(rows.first).not_to_have_attribute("data-seq", str(newest))
    assert 0 < rows.count() < 50
    assert int(rows.first.get_attribute("data-seq") or 0) < newest - 49
    page.get_by_role("link", name="Newer events").click()
    expect(rows.first).to_have_attribute("data-seq", str(newest))

    page.get_by_label("Action").fill("grant.*")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#audit-summary")).to_contain_text("30 matching events")
    actions = set(rows.evaluate_all("rows => rows.map(r => r.dataset.action)"))
    assert actions == {"grant.expire"}
    href = page.get_by_role("link", name="CSV").get_attribute("href") or ""
    assert "action=grant.%2A" in href
    exported = page.request.get(href).text()
    assert exported.count("grant.expire") == 30 and "credentials.issue" not in exported
    site.shot(page, "ux-audit-filtered-375")


def test_compliance_report_page_and_csv_download(site: Site) -> None:
    _one_click_credentials(site.sign_in("dev"))
    page = site.sign_in("ada")
    page.get_by_role("link", name="Audit").click()
    page.get_by_role("link", name="Compliance report").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Compliance report")
    expect(page.locator('tr[data-person="dev@example.com"]')).to_be_visible()
    expect(page.get_by_text("None: no one held a grant")).to_be_visible()
    site.shot(page, "ux-report-1280")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    path = download.value.path()
    text = open(path, encoding="utf-8").read()  # noqa: PTH123 - a download's temp file
    assert text.startswith("section,subject,kind,") and "dev@example.com" in text


def _luminance(rgb: str) -> float:
    values = [int(v) / 255 for v in re.findall(r"\d+", rgb)[:3]]
    linear = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in values]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(one: str, two: str) -> float:
    light, dark = sorted((_luminance(one), _luminance(two)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_focus_ring_is_visible_with_three_to_one_contrast(site: Site) -> None:
    page = site.sign_in("dev")
    ring = (
        "e => { const s = getComputedStyle(e); "
        "return [s.outlineStyle, s.outlineWidth, s.outlineColor] }"
    )
    background = page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
    page.goto("/request/app-read")
    page.get_by_label("Reason").focus()
    style, width, color = page.get_by_label("Reason").evaluate(ring)
    assert style == "solid" and float(width.removesuffix("px")) >= 2
    assert _contrast(color, background) >= 3, (color, background)
    # Keyboard focus in the dark header, from the top: skip link first, then the brand link.
    page.goto("/")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    focused = page.locator(":focus")
    expect(focused).to_have_text("AWS access broker")
    header = page.evaluate(
        "getComputedStyle(document.querySelector('.site-header')).backgroundColor"
    )
    style, width, color = focused.evaluate(ring)
    assert style == "solid" and _contrast(color, header) >= 3, (color, header)
