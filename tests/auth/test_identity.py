"""The person is (issuer, subject): required claims, stable SourceIdentity, key set, bearers."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from broker.auth.identity import (
    ClaimRules,
    ClaimsRefused,
    auth_context,
    derive_source_identity,
    identity_of,
    person_claims,
)
from broker.auth.idtoken import IdTokenValidator, InvalidIdToken
from broker.web.api import json_depth_exceeds

ISSUER = "https://idp.example.com"
GOOD = {"sub": "00u1", "email": "Sam@Example.com", "email_verified": True, "groups": ["sre"]}
SOURCE_IDENTITY = re.compile(r"^[\w+=,.@-]{2,64}$", re.ASCII)


# -- SourceIdentity ---------------------------------------------------------------------------


def test_source_identity_fits_sts_and_depends_only_on_issuer_and_subject() -> None:
    value = derive_source_identity(ISSUER, "00u1")
    assert SOURCE_IDENTITY.match(value) and len(value) <= 64
    assert value == derive_source_identity(ISSUER, "00u1")  # stable
    assert value != derive_source_identity("https://other.example.com", "00u1")
    assert value != derive_source_identity(ISSUER, "00u2")
    odd = derive_source_identity(ISSUER, "a b/c ünïcode " * 20)
    assert SOURCE_IDENTITY.match(odd)
    assert "sam" not in value  # nothing of the (mutable) email leaks in


# -- required claims --------------------------------------------------------------------------


def test_good_claims_give_attributes_without_protocol_or_sign_in_claims() -> None:
    claims = {**GOOD, "iss": ISSUER, "aud": "broker", "nonce": "n", "amr": ["mfa"], "dept": "x"}
    attributes = person_claims(claims, issuer=ISSUER, rules=ClaimRules(require_groups=True))
    assert attributes == {"email": "sam@example.com", "groups": ["sre"], "dept": "x"}
    assert auth_context(claims) == {"amr": ["mfa"]}


@pytest.mark.parametrize("email", [None, "", "00u1", 42])
def test_missing_email_is_refused_and_never_replaced_by_sub(email: Any) -> None:
    claims = {k: v for k, v in GOOD.items() if k != "email"}
    if email is not None:
        claims["email"] = email
    with pytest.raises(ClaimsRefused) as refused:
        person_claims(claims, issuer=ISSUER, rules=ClaimRules())
    assert refused.value.reason == "missing_email"
    assert "email" in refused.value.message


@pytest.mark.parametrize("verified", [False, "false", None, 1, "yes"])
def test_unverified_email_is_refused(verified: Any) -> None:
    claims = {**GOOD, "email_verified": verified}
    if verified is None:
        del claims["email_verified"]
    with pytest.raises(ClaimsRefused) as refused:
        person_claims(claims, issuer=ISSUER, rules=ClaimRules())
    assert refused.value.reason == "email_not_verified"


def test_issuers_that_never_send_email_verified_may_be_listed_but_false_stays_false() -> None:
    rules = ClaimRules(email_verified_optional_issuers=(ISSUER + "/",))
    absent = {k: v for k, v in GOOD.items() if k != "email_verified"}
    assert person_claims(absent, issuer=ISSUER, rules=rules)["email"] == "sam@example.com"
    assert person_claims({**GOOD, "email_verified": "true"}, issuer=ISSUER, rules=rules)
    with pytest.raises(ClaimsRefused):
        person_claims({**GOOD, "email_verified": False}, issuer=ISSUER, rules=rules)
    with pytest.raises(ClaimsRefused):  # another issuer is not covered by the list
        person_claims(absent, issuer="https://evil.example.com", rules=rules)


def test_absent_groups_are_refused_where_the_policy_uses_groups_but_empty_is_fine() -> None:
    no_groups = {k: v for k, v in GOOD.items() if k != "groups"}
    with pytest.raises(ClaimsRefused) as refused:
        person_claims(no_groups, issuer=ISSUER, rules=ClaimRules(require_groups=True))
    assert refused.value.reason == "missing_groups"
    empty = {**GOOD, "groups": []}
    assert (
        person_claims(empty, issuer=ISSUER, rules=ClaimRules(require_groups=True))["groups"] == []
    )
    # a policy that never matches on groups does not need them
    assert person_claims(no_groups, issuer=ISSUER, rules=ClaimRules())["groups"] == []


def test_groups_come_from_the_configured_claim_only() -> None:
    claims = {**GOOD, "groups": ["admins"], "roles": ["sre"]}
    attributes = person_claims(claims, issuer=ISSUER, rules=ClaimRules(groups_claim="roles"))
    assert attributes["groups"] == ["sre"]
    with pytest.raises(ClaimsRefused) as refused:
        person_claims({**GOOD, "groups": {"a": 1}}, issuer=ISSUER, rules=ClaimRules())
    assert refused.value.reason == "malformed_groups"


def test_identity_takes_attributes_from_the_person_and_mfa_from_the_sign_in() -> None:
    identity = identity_of(
        ISSUER, "00u1", {"email": "sam@example.com", "groups": ["sre"]}, {"amr": ["mfa"]}
    )
    assert identity.subject == "00u1" and identity.email == "sam@example.com"
    assert identity.groups == frozenset({"sre"}) and identity.amr == ("mfa",)


# -- ID tokens: key set refetch, bearer age, azp ------------------------------------------------


class FakeProvider:
    """Discovery and JWKS answered in process, counting key-set fetches."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256"})
        self.jwks_fetches = 0
        self.block: threading.Event | None = None

    def get(self, url: str) -> Any:
        if url.endswith("/.well-known/openid-configuration"):
            return {"issuer": ISSUER, "jwks_uri": f"{ISSUER}/jwks"}
        self.jwks_fetches += 1
        if self.block is not None:
            self.block.wait(10)
        return KeySet([self.key]).as_dict(private=False)

    def token(self, kid: str = "k1", **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": "broker", "sub": "00u1", "iat": now, "exp": now + 3600}
        body.update(claims)
        return jwt.encode({"alg": "RS256", "kid": kid}, body, self.key)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_unknown_kid_flood_refetches_the_key_set_once_per_interval() -> None:
    provider, clock = FakeProvider(), Clock()
    validator = IdTokenValidator(
        ISSUER, "broker", http_get=provider.get, clock=clock, jwks_refetch_seconds=60
    )
    validator.validate(provider.token())
    assert provider.jwks_fetches == 1
    clock.now += 61  # (the first fetch counts: a kid unknown right after it waits its turn)
    for n in range(50):
        with pytest.raises(InvalidIdToken, match="unknown key"):
            validator.validate(provider.token(kid=f"forged-{n}"))
    assert provider.jwks_fetches == 2  # one refetch for the whole flood
    clock.now += 61
    with pytest.raises(InvalidIdToken):
        validator.validate(provider.token(kid="forged-later"))
    assert provider.jwks_fetches == 3


def test_a_slow_key_fetch_does_not_block_validation_with_known_keys() -> None:
    provider = FakeProvider()
    validator = IdTokenValidator(ISSUER, "broker", http_get=provider.get)
    good = provider.token()
    validator.validate(good)
    provider.block = threading.Event()
    stuck = threading.Thread(
        target=lambda: pytest.raises(InvalidIdToken, validator.validate, provider.token(kid="x"))
    )
    stuck.start()
    time.sleep(0.2)  # the refetch for kid "x" is now hanging inside the provider
    started = time.monotonic()
    assert validator.validate(good)["sub"] == "00u1"
    assert time.monotonic() - started < 1.0
    provider.block.set()
    stuck.join(10)


def test_id_token_bearers_have_a_maximum_age_and_must_be_ours() -> None:
    provider, clock = FakeProvider(), Clock()
    validator = IdTokenValidator(
        ISSUER, "broker", http_get=provider.get, clock=clock, max_age_seconds=3600
    )
    fresh = provider.token()
    assert validator.validate_bearer(fresh)["sub"] == "00u1"
    old = provider.token(iat=int(clock.now) - 3700, exp=int(clock.now) + 600)
    assert validator.validate(old)["sub"] == "00u1"  # still valid as a sign-in token
    with pytest.raises(InvalidIdToken, match="minutes ago"):
        validator.validate_bearer(old)
    with pytest.raises(InvalidIdToken, match="another client"):
        validator.validate_bearer(provider.token(azp="someone-else"))
    assert validator.validate_bearer(provider.token(azp="broker"))["azp"] == "broker"


# -- hostile JSON ------------------------------------------------------------------------------


def test_json_depth_scan_ignores_brackets_inside_strings() -> None:
    assert json_depth_exceeds(b"[" * 33 + b"]" * 33, 32)
    assert not json_depth_exceeds(b"[" * 32 + b"]" * 32, 32)
    assert not json_depth_exceeds(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"[["}', 4)


# -- provider shapes ----------------------------------------------------------------------------


def test_keycloak_realm_roles_by_dotted_path() -> None:
    claims = {**GOOD, "realm_access": {"roles": ["sre", "offline_access"]}}
    del claims["groups"]
    rules = ClaimRules(groups_claim="realm_access.roles", require_groups=True)
    attributes = person_claims(claims, issuer=ISSUER, rules=rules)
    assert attributes["groups"] == ["offline_access", "sre"]
    assert attributes["realm_access"] == {"roles": ["sre", "offline_access"]}
    with pytest.raises(ClaimsRefused) as refused:
        person_claims({**GOOD, "realm_access": {}}, issuer=ISSUER, rules=rules)
    assert refused.value.reason == "missing_groups"


def test_entra_groups_and_app_roles_together() -> None:
    object_id = "7f1c5c2a-31b4-4d2e-9f55-0c2f1f4d8a11"
    claims = {**GOOD, "groups": [object_id], "roles": ["Broker.Sre"]}
    rules = ClaimRules(groups_claim="groups,roles", require_groups=True)
    attributes = person_claims(claims, issuer=ISSUER, rules=rules)
    assert attributes["groups"] == sorted([object_id, "Broker.Sre"])
    only_roles = {k: v for k, v in claims.items() if k != "groups"}
    assert person_claims(only_roles, issuer=ISSUER, rules=rules)["groups"] == ["Broker.Sre"]


@pytest.mark.parametrize(
    "overage",
    [
        {"_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {"endpoint": "x"}}},
        {"hasgroups": True},
    ],
)
def test_entra_group_overage_is_refused_with_its_cause(overage: dict[str, Any]) -> None:
    claims = {k: v for k, v in GOOD.items() if k != "groups"} | overage
    with pytest.raises(ClaimsRefused) as refused:
        person_claims(claims, issuer=ISSUER, rules=ClaimRules(require_groups=True))
    assert refused.value.reason == "groups_overage"
    assert "overage" in refused.value.message and "roles" in (refused.value.hint or "")
