"""A real OpenID Provider for tests: ``oidc-provider`` (npm) run on loopback by Node.

Usage::

    with OidcProvider(clients=[...], users=[...]) as idp:
        idp.issuer                    # "http://127.0.0.1:PORT"
        tokens = idp.login("dana")    # code + PKCE flow without a browser -> token response

Needs ``npm ci`` in tests/node (node_modules are not committed).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import selectors
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import requests

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
SERVER_SCRIPT = NODE_DIR / "oidc_server.mjs"

DEFAULT_CLIENT_ID = "broker"
DEFAULT_CLIENT_SECRET = "broker-test-secret"
DEFAULT_REDIRECT_URI = "http://127.0.0.1:9/auth/callback"
DEFAULT_SCOPE = "openid email profile groups"

DEFAULT_CLIENTS: list[dict[str, Any]] = [
    {
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "redirect_uris": [DEFAULT_REDIRECT_URI],
        "post_logout_redirect_uris": ["http://127.0.0.1:9/"],
    }
]
DEFAULT_USERS: list[dict[str, Any]] = [
    {
        "sub": "dana",
        "email": "dana@contractor.example",
        "name": "Dana Contractor",
        "groups": ["contractors"],
        "amr": ["pwd", "mfa"],
        "acr": "urn:broker:test:mfa",
    },
    {
        "sub": "alex",
        "email": "alex@corp.example",
        "name": "Alex Admin",
        "groups": ["admins", "engineers"],
        "amr": ["pwd"],
    },
]


class OidcProviderError(RuntimeError):
    """The test identity provider could not be started or refused a step of a flow."""


def node_modules_present() -> bool:
    return (NODE_DIR / "node_modules" / "oidc-provider" / "package.json").is_file()


def require_node_modules() -> None:
    if shutil.which("node") is None:
        raise OidcProviderError("node is not on PATH; the OIDC test provider needs Node.js >= 20")
    if not node_modules_present():
        raise OidcProviderError(f"node modules missing: run `npm ci` in {NODE_DIR}")


def pkce_pair() -> tuple[str, str]:
    """Return ``(code_verifier, S256 code_challenge)``."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return verifier, challenge


@dataclass(frozen=True)
class _Form:
    action: str
    method: str
    fields: dict[str, str]


class _FormParser(HTMLParser):
    """Collects forms, their named inputs and the named buttons that submit them."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self._by_id: dict[str, dict[str, Any]] = {}
        self._current: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            form: dict[str, Any] = {
                "action": a.get("action", ""),
                "method": a.get("method", "get").lower(),
                "fields": {},
            }
            self.forms.append(form)
            if a.get("id"):
                self._by_id[a["id"]] = form
            self._current = form
        elif tag == "input" and a.get("name"):
            target = self._by_id.get(a.get("form", "")) or self._current
            if target is not None:
                target["fields"][a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def _forms(html: str) -> list[_Form]:
    parser = _FormParser()
    parser.feed(html)
    return [_Form(f["action"], f["method"], dict(f["fields"])) for f in parser.forms]


class OidcProvider:
    """Runs ``tests/node/oidc_server.mjs`` on a free loopback port for the lifetime of the object.

    ``clients`` are oidc-provider client metadata dicts (``client_id``, ``client_secret`` or
    ``"token_endpoint_auth_method": "none"``, ``redirect_uris``, ``post_logout_redirect_uris``,
    optionally ``application_type``, ``id_token_signed_response_alg``, ...). Web clients need an
    exact redirect_uri match; ``"application_type": "native"`` clients accept any loopback port.
    ``users`` are dicts with ``sub``, ``email``, ``name``, ``groups``, ``amr`` (list), ``acr``.
    ``ttl`` overrides oidc-provider TTLs in seconds, e.g. ``{"IdToken": 60}``.
    """

    def __init__(
        self,
        clients: list[dict[str, Any]] | None = None,
        users: list[dict[str, Any]] | None = None,
        *,
        ttl: dict[str, int] | None = None,
        auto_logout: bool = True,
        port: int = 0,
        startup_timeout: float = 30.0,
    ) -> None:
        self.clients = clients if clients is not None else [dict(c) for c in DEFAULT_CLIENTS]
        self.users = users if users is not None else [dict(u) for u in DEFAULT_USERS]
        self.ttl = ttl or {}
        self.auto_logout = auto_logout
        self.requested_port = port
        self.startup_timeout = startup_timeout
        self.issuer = ""
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._discovery: dict[str, Any] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> OidcProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def log_path(self) -> Path | None:
        return Path(self._tmp.name) / "oidc_server.log" if self._tmp else None

    def logs(self) -> str:
        """The provider's stderr so far (warnings, server errors)."""
        path = self.log_path
        return path.read_text(errors="replace") if path and path.exists() else ""

    def start(self) -> OidcProvider:
        if self._proc is not None:
            return self
        require_node_modules()
        self._tmp = tempfile.TemporaryDirectory(prefix="oidc-provider-")
        config_path = Path(self._tmp.name) / "config.json"
        config = {
            "clients": self.clients,
            "users": self.users,
            "ttl": self.ttl,
            "autoLogout": self.auto_logout,
        }
        config_path.write_text(json.dumps(config))
        log = open(self.log_path or os.devnull, "wb")  # the child keeps its own descriptor
        try:
            self._proc = subprocess.Popen(
                ["node", str(SERVER_SCRIPT), str(config_path), str(self.requested_port)],
                cwd=NODE_DIR,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        finally:
            log.close()
        try:
            info = self._read_ready_line()
        except BaseException:
            self.stop()
            raise
        self.issuer = str(info["issuer"])
        self.port = int(info["port"])
        return self

    def _read_ready_line(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OidcProviderError(
                        f"OIDC provider did not start within {self.startup_timeout}s:\n"
                        f"{self.logs()}"
                    )
                if not sel.select(timeout=remaining):
                    continue
                chunk = os.read(self._proc.stdout.fileno(), 4096)
                if not chunk:
                    self._proc.wait(timeout=5)
                    raise OidcProviderError(
                        f"OIDC provider exited with {self._proc.returncode}:\n{self.logs()}"
                    )
                buf += chunk
        line = buf.split(b"\n", 1)[0]
        try:
            info: dict[str, Any] = json.loads(line)
        except ValueError as exc:
            raise OidcProviderError(f"unexpected output from OIDC provider: {line!r}") from exc
        return info

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._discovery = None

    def set_user(self, sub: str, **fields: Any) -> dict[str, Any]:
        """Change a user at the provider, as its administrator would (``None`` deletes a field;
        ``email_verified="absent"`` makes the provider leave that claim out)."""
        resp = requests.post(f"{self.issuer}/__test__/users/{sub}", json=fields, timeout=10)
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    # -- metadata ------------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        """The ``/.well-known/openid-configuration`` document (fetched once)."""
        if self._discovery is None:
            if not self.issuer:
                raise OidcProviderError("OIDC provider is not running")
            resp = requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=10)
            resp.raise_for_status()
            self._discovery = resp.json()
        return self._discovery

    @property
    def jwks_uri(self) -> str:
        return str(self.discovery()["jwks_uri"])

    @property
    def authorization_endpoint(self) -> str:
        return str(self.discovery()["authorization_endpoint"])

    @property
    def token_endpoint(self) -> str:
        return str(self.discovery()["token_endpoint"])

    @property
    def end_session_endpoint(self) -> str:
        return str(self.discovery()["end_session_endpoint"])

    def jwks(self) -> dict[str, Any]:
        resp = requests.get(self.jwks_uri, timeout=10)
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def client(self, client_id: str | None = None) -> dict[str, Any]:
        """The configured client metadata for ``client_id`` (default: the first client)."""
        if client_id is None:
            return self.clients[0]
        for c in self.clients:
            if c["client_id"] == client_id:
                return c
        raise KeyError(client_id)

    # -- flows without a browser ---------------------------------------------------------------

    def authorization_url(
        self,
        *,
        client_id: str | None = None,
        redirect_uri: str | None = None,
        scope: str = DEFAULT_SCOPE,
        state: str | None = None,
        nonce: str | None = None,
        code_challenge: str | None = None,
        extra_params: dict[str, str] | None = None,
    ) -> str:
        """An authorization request URL. Without ``code_challenge`` it carries no PKCE."""
        client = self.client(client_id)
        params = {
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": redirect_uri or client["redirect_uris"][0],
            "scope": scope,
            "state": state or secrets.token_urlsafe(16),
            "nonce": nonce or secrets.token_urlsafe(16),
        }
        if code_challenge is not None:
            params["code_challenge"] = code_challenge
            params["code_challenge_method"] = "S256"
        params.update(extra_params or {})
        return f"{self.authorization_endpoint}?{urlencode(params)}"

    def complete_login(
        self,
        authorization_url: str,
        user: str,
        *,
        session: requests.Session | None = None,
        redirect_prefix: str | None = None,
    ) -> str:
        """Sign ``user`` (sub or email) in at the provider for an authorization request URL
        (e.g. one the broker produced) and return the final redirect to the client, i.e.
        ``<redirect_uri>?code=...&state=...&iss=...`` (or ``?error=...``). The redirect_uri is
        never contacted. Redirects are followed only while they stay on the provider's origin,
        unless ``redirect_prefix`` is given, in which case they stop at the first URL starting
        with it. Pass a ``session`` to reuse the provider's SSO cookies across calls.
        """
        http = session or requests.Session()
        url = authorization_url
        submitted_login = False
        for _ in range(20):
            resp = http.get(url, allow_redirects=False, timeout=10)
            if resp.is_redirect:
                url = urljoin(url, resp.headers["location"])
                if self._is_client_redirect(url, redirect_prefix):
                    return url
                continue
            if resp.status_code != 200:
                raise OidcProviderError(f"GET {url} -> {resp.status_code}: {resp.text[:500]}")
            login_forms = [f for f in _forms(resp.text) if "login" in f.fields]
            if not login_forms:
                raise OidcProviderError(f"no login form at {url}: {resp.text[:500]}")
            if submitted_login:
                raise OidcProviderError(f"login as {user!r} was refused: {resp.text[:500]}")
            form = login_forms[0]
            post = http.post(
                urljoin(url, form.action),
                data={"login": user, "password": "any"},
                allow_redirects=False,
                timeout=10,
            )
            submitted_login = True
            if not post.is_redirect:
                if "Unknown user" in post.text:
                    raise OidcProviderError(f"unknown user {user!r} at the test provider")
                raise OidcProviderError(f"login POST -> {post.status_code}: {post.text[:500]}")
            url = urljoin(url, post.headers["location"])
            if self._is_client_redirect(url, redirect_prefix):
                return url
        raise OidcProviderError("too many redirects in the authorization flow")

    def _is_client_redirect(self, url: str, redirect_prefix: str | None) -> bool:
        if redirect_prefix is not None:
            return url.startswith(redirect_prefix)
        issuer = urlsplit(self.issuer)
        target = urlsplit(url)
        return (target.scheme, target.netloc) != (issuer.scheme, issuer.netloc)

    def exchange_code(
        self,
        code: str,
        *,
        code_verifier: str | None,
        client_id: str | None = None,
        redirect_uri: str | None = None,
    ) -> requests.Response:
        """POST the token endpoint (authorization_code grant). Returns the raw response."""
        client = self.client(client_id)
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri or client["redirect_uris"][0],
        }
        if code_verifier is not None:
            data["code_verifier"] = code_verifier
        auth: tuple[str, str] | None = None
        if client.get("client_secret"):
            auth = (client["client_id"], client["client_secret"])
        else:
            data["client_id"] = client["client_id"]
        return requests.post(self.token_endpoint, data=data, auth=auth, timeout=10)

    def login(
        self,
        user: str,
        *,
        client_id: str | None = None,
        redirect_uri: str | None = None,
        scope: str = DEFAULT_SCOPE,
        nonce: str | None = None,
        session: requests.Session | None = None,
        extra_params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Run the authorization code + PKCE (S256) flow for ``user`` (sub or email) and return
        the token endpoint's JSON (``id_token``, ``access_token``, ``expires_in``, ...)."""
        client = self.client(client_id)
        redirect_uri = redirect_uri or client["redirect_uris"][0]
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(16)
        url = self.authorization_url(
            client_id=client["client_id"],
            redirect_uri=redirect_uri,
            scope=scope,
            state=state,
            nonce=nonce,
            code_challenge=challenge,
            extra_params=extra_params,
        )
        final = self.complete_login(url, user, session=session, redirect_prefix=redirect_uri)
        query = parse_qs(urlsplit(final).query)
        if "error" in query:
            raise OidcProviderError(f"authorization failed: {query}")
        if query.get("state") != [state]:
            raise OidcProviderError(f"state mismatch in {final}")
        resp = self.exchange_code(
            query["code"][0],
            code_verifier=verifier,
            client_id=client["client_id"],
            redirect_uri=redirect_uri,
        )
        if resp.status_code != 200:
            raise OidcProviderError(f"token exchange -> {resp.status_code}: {resp.text}")
        tokens: dict[str, Any] = resp.json()
        return tokens

    def logout(
        self,
        *,
        session: requests.Session,
        id_token_hint: str | None = None,
        post_logout_redirect_uri: str | None = None,
        client_id: str | None = None,
    ) -> str:
        """RP-initiated logout of the provider session held in ``session``'s cookies; confirms
        the logout form and returns the final URL (the post_logout_redirect_uri, or the
        provider's "signed out" page)."""
        params: dict[str, str] = {}
        if id_token_hint:
            params["id_token_hint"] = id_token_hint
        if post_logout_redirect_uri:
            params["post_logout_redirect_uri"] = post_logout_redirect_uri
        if client_id:
            params["client_id"] = client_id
        url = f"{self.end_session_endpoint}?{urlencode(params)}"
        resp = session.get(url, allow_redirects=False, timeout=10)
        forms = [f for f in _forms(resp.text) if "xsrf" in f.fields]
        if resp.status_code != 200 or not forms:
            raise OidcProviderError(
                f"no logout form at {url}: {resp.status_code} {resp.text[:500]}"
            )
        post = session.post(
            urljoin(url, forms[0].action),
            data=forms[0].fields,
            allow_redirects=False,
            timeout=10,
        )
        if post.is_redirect:
            target = urljoin(url, post.headers["location"])
            if self._is_client_redirect(target, post_logout_redirect_uri):
                return target
            session.get(target, timeout=10).raise_for_status()
            return target
        post.raise_for_status()
        return url
