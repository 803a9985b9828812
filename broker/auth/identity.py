"""Who a person is, and which of the provider's claims the broker trusts to decide for them.

A person is (issuer, subject). Email, groups and other attributes are what the provider says
about that person *now*: they must be present and verified when the policy depends on them, and
they go stale (see `CLAIMS_MAX_AGE_SECONDS`). How someone authenticated (`amr`, `acr`) belongs
to one sign-in, never to the person, so it travels with the session or token instead.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from broker.errors import Unauthenticated
from broker.policy import Identity

LOCAL_ISSUER = "urn:broker:admin-minted"
"""Issuer of people that exist only in the broker (automation identities an admin minted)."""

# Claims about the token or the sign-in, not about the person.
_PROTOCOL_CLAIMS = frozenset(
    {
        "iss",
        "aud",
        "azp",
        "exp",
        "iat",
        "nbf",
        "jti",
        "nonce",
        "at_hash",
        "c_hash",
        "s_hash",
        "sid",
        "auth_time",
        "amr",
        "acr",
        "sub",
    }
)


class ClaimsRefused(Unauthenticated):
    """The provider's claims are missing something the broker needs to decide safely."""

    code = "claims_refused"

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class StaleClaims(Unauthenticated):
    """The person's claims are older than the freshness bound and could not be refreshed."""

    code = "stale_claims"


@dataclass(frozen=True)
class ClaimRules:
    """What the broker requires of a provider's claims before it trusts them."""

    groups_claim: str = "groups"
    """Claim(s) holding group names: comma-separated, each a name or a dotted path."""
    require_groups: bool = False
    """The policy matches on groups, so an absent groups claim (not an empty one) is refused."""
    email_verified_optional_issuers: Collection[str] = ()
    """Issuers that never send `email_verified` and whose emails are trusted as verified."""


def derive_source_identity(issuer: str, subject: str) -> str:
    """The SourceIdentity AWS sees for (issuer, subject): stable, opaque, 2–64 of [\\w+=,.@-]."""
    digest = hashlib.sha256(f"{issuer}\n{subject}".encode()).digest()
    return "p-" + base64.b32encode(digest).decode("ascii").rstrip("=").lower()[:32]


def person_claims(claims: Mapping[str, Any], *, issuer: str, rules: ClaimRules) -> dict[str, Any]:
    """The person's attributes from validated provider claims, or ClaimsRefused.

    Required: `email` (never replaced by `sub`), `email_verified` true (or absent for an issuer
    named in `email_verified_optional_issuers`), and the groups claim(s) when the policy uses
    groups (see `person_groups`).
    Returned: email (lower case), groups (sorted, the configured claim) and every other
    non-protocol claim, for policy rules that match on claims.
    """
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise ClaimsRefused(
            "missing_email",
            "Your identity provider did not say who you are by email (no `email` claim), so the "
            "broker cannot apply its policy to you.",
            hint="Sign in again from the broker without changing the requested scopes; if it "
            "persists, an operator checks that the `email` scope is granted to the broker.",
        )
    verified = claims.get("email_verified")
    optional = {i.rstrip("/") for i in rules.email_verified_optional_issuers}
    if verified is None and issuer.rstrip("/") in optional:
        verified = True
    if verified is not True and str(verified).lower() != "true":
        raise ClaimsRefused(
            "email_not_verified",
            f"Your identity provider does not vouch for the address {email} "
            f"(email_verified is {verified!r}).",
            hint="Verify your email address with your identity provider, then sign in again.",
        )
    attributes = {k: v for k, v in claims.items() if k not in _PROTOCOL_CLAIMS}
    attributes.pop("email_verified", None)
    attributes["email"] = email.lower()
    groups = person_groups(claims, rules)
    for path in rules.groups_claim.split(","):
        attributes.pop(path.strip(), None)
    attributes["groups"] = groups
    return attributes


def _claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (`realm_access.roles`), or None when any step is missing."""
    value: Any = claims
    for step in path.split("."):
        if not isinstance(value, Mapping) or step not in value:
            return None
        value = value[step]
    return value


def person_groups(claims: Mapping[str, Any], rules: ClaimRules) -> list[str]:
    """The person's groups: the union of the configured claims (comma-separated dotted paths,
    e.g. `groups,roles` for Entra groups plus app roles, `realm_access.roles` for Keycloak).

    Refuses an Entra "group overage" (the token points elsewhere instead of listing groups)
    and, where the policy uses groups, a token in which none of the claims is present.
    """
    paths = [p.strip() for p in rules.groups_claim.split(",") if p.strip()]
    names = claims.get("_claim_names")
    if (isinstance(names, Mapping) and "groups" in names) or claims.get("hasgroups") is True:
        raise ClaimsRefused(
            "groups_overage",
            "Your identity provider left your groups out of the token because there are too "
            "many of them (Microsoft Entra ID's group overage), so the broker cannot decide.",
            hint="An operator limits the token to groups assigned to the application, or maps "
            "access to app roles (BROKER_OIDC_GROUPS_CLAIM=roles); see "
            "docs/identity-providers.md.",
        )
    found: list[str] = []
    present = False
    for path in paths:
        value = _claim_at(claims, path)
        if value is None:
            continue
        present = True
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
            raise ClaimsRefused(
                "malformed_groups",
                f"The `{path}` claim is not a list of group names.",
                hint="An operator checks the provider's groups claim mapping.",
            )
        found.extend(value)
    if not present and rules.require_groups:
        raise ClaimsRefused(
            "missing_groups",
            f"Your identity provider did not send your groups (no `{rules.groups_claim}` "
            "claim), and the broker's policy decides by group.",
            hint="Sign in again from the broker without changing the requested scopes; if it "
            "persists, an operator checks that the provider sends the groups claim (Google "
            "Workspace sends none: see docs/identity-providers.md).",
        )
    return sorted(set(found))


def auth_context(claims: Mapping[str, Any]) -> dict[str, Any]:
    """How this sign-in was made (`amr`, `acr`): kept with the session or token, not the person."""
    context: dict[str, Any] = {}
    amr = claims.get("amr")
    if isinstance(amr, str):
        amr = [amr]
    if isinstance(amr, list):
        context["amr"] = [str(a) for a in amr]
    acr = claims.get("acr")
    if acr is not None:
        context["acr"] = str(acr)
    return context


def attributes_of(identity: Identity) -> dict[str, Any]:
    """The attributes a principal row keeps for an identity: its claims, email and groups."""
    attributes = dict(identity.claims)
    attributes["email"] = identity.email.lower()
    attributes["groups"] = sorted(identity.groups)
    return attributes


def identity_of(
    issuer: str, subject: str, attributes: Mapping[str, Any], auth: Mapping[str, Any]
) -> Identity:
    """The Identity the policy decides on: the person's attributes plus this sign-in's context."""
    groups = attributes.get("groups") or []
    amr = auth.get("amr") or []
    acr = auth.get("acr")
    return Identity(
        issuer=issuer,
        subject=subject,
        email=str(attributes.get("email", "")).lower(),
        groups=frozenset(str(g) for g in groups),
        claims=dict(attributes),
        amr=tuple(str(a) for a in amr),
        acr=str(acr) if acr is not None else None,
    )
