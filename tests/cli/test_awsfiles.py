"""Surgical edits of the AWS INI files (no configparser round trip)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from clibed import LiveBroker, Workspace

from broker.cli.client.awsfiles import NotOurs, config_section, set_section, update_file
from broker.cli.client.cache import AwsCredentials, FileCache
from broker.cli.client.state import ClientState

P = Path("credentials")
MANAGED = {"aws_access_key_id": "NEW", "x_broker_managed": "true"}
OWNED = ("aws_secret_access_key", "aws_session_token", "x_broker_expiration")


def test_replaces_only_owned_keys_in_place() -> None:
    text = (
        "[p]\n; why this profile exists\nregion = eu-west-1\nx_broker_managed = true\n"
        "aws_access_key_id = OLD\naws_session_token = T\n  continued\n# next one\n[z]\nk=v\n"
    )
    out = set_section(text, ("p",), MANAGED, owned=OWNED, force=False, path=P)
    assert out == (
        "[p]\n; why this profile exists\nregion = eu-west-1\naws_access_key_id = NEW\n"
        "x_broker_managed = true\n# next one\n[z]\nk=v\n"
    )


def test_appends_a_new_section_and_keeps_everything_else() -> None:
    text = "# top\n[a]\nx = 1"
    out = set_section(text, ("new",), {"k": "v"}, owned=(), force=False, path=P)
    assert out == "# top\n[a]\nx = 1\n\n[new]\nk = v\n"
    assert set_section("", ("new",), {"k": "v"}, owned=(), force=False, path=P) == "[new]\nk = v\n"


def test_refuses_foreign_and_duplicate_sections() -> None:
    with pytest.raises(NotOurs):
        set_section(
            "[p]\naws_access_key_id = MINE\n", ("p",), MANAGED, owned=OWNED, force=False, path=P
        )
    forced = set_section(
        "[p]\naws_access_key_id = MINE\n", ("p",), MANAGED, owned=OWNED, force=True, path=P
    )
    assert "MINE" not in forced
    with pytest.raises(Exception, match="more than one"):
        set_section("[p]\n[p]\n", ("p",), MANAGED, owned=OWNED, force=True, path=P)


def test_config_profile_names() -> None:
    assert config_section("work") == ("profile work",)
    text = "[profile   work]\nregion = us-east-1\nx_broker_managed = true\n"
    out = set_section(
        text, config_section("work"), {"credential_process": "b"}, owned=(), force=False, path=P
    )
    assert (
        out
        == "[profile   work]\ncredential_process = b\nregion = us-east-1\nx_broker_managed = true\n"
    )


def test_symlinked_file_is_written_through(tmp_path: Path) -> None:
    target = tmp_path / "dotfiles" / "credentials"
    target.parent.mkdir()
    target.write_text("[a]\nx = 1\n")
    link = tmp_path / "credentials"
    link.symlink_to(target)
    update_file(link, lambda text: text + "[b]\ny = 2\n")
    assert link.is_symlink()
    assert target.read_text() == "[a]\nx = 1\n[b]\ny = 2\n"


def test_file_cache_prunes_expired_entries(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    cache = FileCache(tmp_path / "c.json")
    old = AwsCredentials("A", "S", "T", now - timedelta(minutes=1))
    new = AwsCredentials("B", "S", "T", now + timedelta(hours=1))
    cache.put("old", old)
    cache.put("new", new)
    assert cache.get("old") is None and cache.get("new") == new
    assert not new.fresh(now + timedelta(minutes=56))  # refreshed 5 minutes before expiry
    assert json.loads((tmp_path / "c.json").read_text())["new"]["Version"] == 1


class _Federation(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        query = parse_qs(urlsplit(self.path).query)
        assert query["Action"] == ["getSigninToken"]
        session = json.loads(query["Session"][0])
        assert set(session) == {"sessionId", "sessionKey", "sessionToken"}
        body = json.dumps({"SigninToken": "signin-token-123"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def federation() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Federation)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/federation"
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


def test_console_prints_sign_in_url(
    cli: object, live: LiveBroker, workspace: Workspace, federation: str
) -> None:
    workspace.sign_in(live)
    opened: list[str] = []
    state = ClientState(store=workspace.store(), browser=lambda url: bool(opened.append(url)))
    result = cli("console", "app-read", "--federation-endpoint", federation, state=state)
    assert result.exit_code == 0, result.output
    url = result.output.strip()
    assert url.startswith(f"{federation}?Action=login")
    assert "SigninToken=signin-token-123" in url
    assert opened == [url]  # offered to a browser first; none here, so printed
