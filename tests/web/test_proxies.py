"""Behind a load balancer: the client's address from trusted proxies only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from apibed import Bed, bed_setup

from broker import create_app
from broker.db import Database, get_database
from broker.models import AuditEvent
from broker.web.proxies import TrustedProxies

DEV = ("developers",)
LB = "10.0.0.5"  # the load balancer, inside the trusted range
OFFICE = "203.0.113.7"  # inside net-read's network
HOME = "198.51.100.1"  # outside it


@pytest.fixture
def behind_lb(database: Database, moto_server: Any, tmp_path: Path) -> Iterator[Bed]:
    roles, policy_dir, config = bed_setup(database.url, moto_server, tmp_path)
    app = create_app(
        {**config, "TRUSTED_PROXIES": "10.0.0.0/24", "RATE_LIMIT_SIGNIN_PER_MINUTE": 2}
    )
    yield Bed(app, app.test_client(), moto_server, roles, policy_dir)
    app.extensions["broker.db"].dispose()


def _issue(bed: Bed, token: str, peer: str, forwarded: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    return bed.client.post(
        "/api/v1/credentials",
        json={"entitlement": "net-read"},
        headers=headers,
        environ_base={"REMOTE_ADDR": peer},
    )


def test_network_binding_reads_the_client_behind_a_trusted_proxy(behind_lb: Bed) -> None:
    token = behind_lb.token("dev@example.com", DEV)
    # From home through the balancer: the balancer's own address must not count.
    refused = _issue(behind_lb, token, LB, HOME)
    assert refused.status_code == 403 and HOME in refused.json["message"]
    # A client cannot claim to be in the office: only the hop the balancer appended counts.
    forged = _issue(behind_lb, token, LB, f"{OFFICE}, {HOME}")
    assert forged.status_code == 403 and HOME in forged.json["message"]
    allowed = _issue(behind_lb, token, LB, OFFICE)
    assert allowed.status_code == 201, allowed.json
    with behind_lb.app.app_context(), get_database().session() as session:
        issued = session.scalars(
            sa.select(AuditEvent).where(AuditEvent.action == "credentials.issued")
        ).all()
        assert [e.ip for e in issued] == [OFFICE]  # the audit's "from" is the client


def test_forwarded_headers_from_anyone_else_are_ignored(behind_lb: Bed) -> None:
    token = behind_lb.token("dev@example.com", DEV)
    direct = _issue(behind_lb, token, HOME, OFFICE)  # not a proxy: its header means nothing
    assert direct.status_code == 403 and HOME in direct.json["message"]


def test_sign_in_rate_limit_is_per_client_not_per_balancer(behind_lb: Bed) -> None:
    def login(client_ip: str) -> int:
        response = behind_lb.client.get(
            "/login",
            headers={"X-Forwarded-For": client_ip},
            environ_base={"REMOTE_ADDR": LB},
        )
        return response.status_code

    noisy = [login("192.0.2.66") for _ in range(3)]
    assert noisy[-1] == 429
    assert login("192.0.2.10") != 429  # another person behind the same balancer is unaffected


def test_without_trusted_proxies_the_peer_is_the_client(bed: Bed) -> None:
    token = bed.token("dev@example.com", DEV)
    spoofed = _issue(bed, token, HOME, OFFICE)
    assert spoofed.status_code == 403 and HOME in spoofed.json["message"]


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        (LB, "192.0.2.1", "192.0.2.1"),
        (LB, "192.0.2.1, 10.0.0.9", "192.0.2.1"),  # two trusted hops
        (LB, "evil, 192.0.2.1", "192.0.2.1"),  # garbage left of the trusted hop is never read
        (LB, "192.0.2.1, not-an-ip", LB),  # a malformed hop appended by our side: trust none
        (LB, "", LB),
        (LB, "[2001:db8::1]:443", "2001:db8::1"),
        ("192.0.2.9", "192.0.2.1", "192.0.2.9"),
    ],
)
def test_client_address_rules(peer: str, forwarded: str, client: str) -> None:
    proxies = TrustedProxies(None, ["10.0.0.0/24"])
    assert proxies.client(peer, forwarded) == client


def test_scheme_comes_from_a_trusted_proxy_only() -> None:
    seen: dict[str, str] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen["scheme"] = environ["wsgi.url_scheme"]
        return []

    proxies = TrustedProxies(app, ["10.0.0.0/24"])
    proxies({"REMOTE_ADDR": LB, "HTTP_X_FORWARDED_PROTO": "https", "wsgi.url_scheme": "http"}, None)
    assert seen["scheme"] == "https"
    proxies(
        {"REMOTE_ADDR": HOME, "HTTP_X_FORWARDED_PROTO": "https", "wsgi.url_scheme": "http"}, None
    )
    assert seen["scheme"] == "http"
