"""Client address and scheme behind trusted proxies (a TLS-terminating load balancer).

Forwarded headers are believed only when the peer that sent the request is a configured proxy
(`BROKER_TRUSTED_PROXIES`, CIDRs). The client is then the right-most address of
`X-Forwarded-For` that is not itself a trusted proxy — a client can prepend whatever it likes,
but it cannot forge what the trusted hops appended. From anyone else the headers are ignored.
Everything downstream (rate limits, network-bound entitlements, the audit trail, the device
approval page) reads `request.remote_addr`, which this middleware sets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from flask import Flask

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PEER_KEY = "broker.peer_addr"


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip().strip('"')
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """WSGI middleware: REMOTE_ADDR and the URL scheme from trusted proxies' headers."""

    def __init__(self, app: Any, networks: Iterable[str]) -> None:
        self.app = app
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in networks
        )

    def trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        """True when `address` is one of the configured proxies."""
        return address is not None and any(
            address.version == n.version and address in n for n in self.networks
        )

    def client(self, peer: str, forwarded_for: str) -> str:
        """The client's address for a request from `peer` carrying `forwarded_for`."""
        if not self.trusted(_address(peer)):
            return peer
        hops = [h for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                return peer  # a malformed hop: believe nothing beyond the proxy itself
            if not self.trusted(address):
                return str(address)
        return str(_address(hops[0])) if hops else peer

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        peer = str(environ.get("REMOTE_ADDR", ""))
        environ[PEER_KEY] = peer
        if self.trusted(_address(peer)):
            environ["REMOTE_ADDR"] = self.client(peer, environ.get("HTTP_X_FORWARDED_FOR", ""))
            proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[-1].strip().lower()
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
        return self.app(environ, start_response)


def init_app(app: Flask) -> None:
    """Put the middleware in front of the app when proxies are configured."""
    networks = app.config.get("TRUSTED_PROXIES") or ()
    if networks:
        app.wsgi_app = TrustedProxies(app.wsgi_app, networks)  # type: ignore[method-assign]
