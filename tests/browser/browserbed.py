"""The broker as one browser test sees it, and helpers to drive it as several people."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oidc_provider import OidcProvider

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


@dataclass
class Site:
    """The broker for one test, and helpers to drive it as several people."""

    url: str
    idp: OidcProvider
    browser: Any
    moto: Any
    roles: dict[str, str]
    federation: Any
    contexts: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    app: Any = None
    """The broker app behind the server for this test (for reading its database)."""

    def sign_in(self, sub: str, **context_options: Any) -> Any:
        """A new browser context (own cookies) signed in as `sub` through the real provider;
        `context_options` go to Playwright's `new_context` (e.g. a phone's viewport)."""
        context = self.browser.new_context(base_url=self.url, **context_options)
        context.set_default_timeout(15_000)
        self.contexts.append(context)
        page = context.new_page()
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.problems.append(str(e)))
        page.goto("/")
        assert page.url.startswith(self.idp.issuer), page.url
        page.fill("input[name=login]", sub)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{self.url}/")
        return page

    def _console(self, message: Any) -> None:
        # Errors on the broker's own pages (CSP violations, script errors, missing assets);
        # the identity provider's pages are not ours to judge.
        where = str((message.location or {}).get("url", ""))
        if message.type == "error" and where.startswith(self.url):
            self.problems.append(f"{where}: {message.text}")

    def shot(self, page: Any, name: str) -> None:
        """Save a full-page screenshot for reviewers."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        for context in self.contexts:
            context.close()
