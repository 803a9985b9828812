"""The AssumeRole request, its answer, the session policy with its network binding."""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from broker.sts.limits import NAME_CHAR_RE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkBinding:
    """Where issued credentials may be used from: source IPs/CIDRs or VPC ids (either suffices)."""

    source_ips: tuple[str | ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    source_vpcs: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.source_ips or self.source_vpcs)


@dataclass(frozen=True)
class AssumeRequest:
    """Everything one AssumeRole call needs, before network binding is folded into the policy."""

    role_arn: str
    role_session_name: str
    source_identity: str
    duration_seconds: int
    tags: Mapping[str, str] = field(default_factory=dict)
    session_policy: Mapping[str, Any] | None = None
    managed_policy_arns: tuple[str, ...] = ()
    network: NetworkBinding | None = None

    def final_policy(self) -> dict[str, Any] | None:
        """The session policy as sent to STS: the entitlement's, plus the network binding."""
        return build_session_policy(self.session_policy, self.network)


@dataclass(frozen=True)
class IssuedCredentials:
    """Credentials from one AssumeRole; the secret parts are kept out of repr and str."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    assumed_role_arn: str
    role_session_name: str
    source_identity: str
    duration_seconds: int


def build_session_policy(
    policy: Mapping[str, Any] | None, network: NetworkBinding | None
) -> dict[str, Any] | None:
    """The session policy to send: `policy` plus a Deny outside the bound network, if any.

    Both condition keys go in one Condition block, so they are ANDed: a request is denied unless
    it comes from one of the IPs or through one of the VPCs. With a network but no policy, the
    result allows everything the role allows (Allow */*) from that network only.
    """
    if not network:
        return dict(policy) if policy is not None else None
    condition: dict[str, dict[str, list[str]]] = {}
    if network.source_ips:
        condition["NotIpAddress"] = {"aws:SourceIp": [str(ip) for ip in network.source_ips]}
    if network.source_vpcs:
        condition["StringNotEquals"] = {"aws:SourceVpc": list(network.source_vpcs)}
    deny = {
        "Sid": "BrokerNetworkBinding",
        "Effect": "Deny",
        "Action": "*",
        "Resource": "*",
        "Condition": condition,
    }
    if policy is None:
        allow = {"Effect": "Allow", "Action": "*", "Resource": "*"}
        return {"Version": "2012-10-17", "Statement": [allow, deny]}
    statements = policy.get("Statement", [])
    listed = [statements] if isinstance(statements, Mapping) else list(statements)
    return {**policy, "Statement": [*listed, deny]}


def role_session_name(grant_id: str, *, prefix: str = "broker") -> str:
    """A role session name unique per session and traceable to the grant: `broker-<grant>-<rand>`.

    At most 64 characters of `[\\w+=,.@-]`; characters STS refuses become `-` and a long grant
    id is cut so the random suffix always fits.
    """
    suffix = secrets.token_hex(4)
    room = 64 - len(prefix) - len(suffix) - 2
    if room < 1:
        raise ValueError(f"session name prefix {prefix!r} is too long")
    grant_part = NAME_CHAR_RE.sub("-", grant_id)[:room] or "grant"
    return NAME_CHAR_RE.sub("-", f"{prefix}-{grant_part}-{suffix}")
