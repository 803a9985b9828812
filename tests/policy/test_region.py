"""The optional `region` of an entitlement: the default region for the engineer's tools."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from broker.policy import PolicyLoadError, load_policy_dir

WritePolicy = Callable[..., Path]

ENTITLEMENT = """\
version: 1
entitlements:
  - id: dev-readonly
    role_arn: arn:aws:iam::111122223333:role/dev-readonly
    allow: {groups: [developers]}
"""


def test_region_is_optional_and_kept(write_policy: WritePolicy) -> None:
    directory = write_policy(
        **{
            "a.yaml": ENTITLEMENT,
            "b.yaml": ENTITLEMENT.replace("dev-", "eu-") + "    region: eu-west-1\n",
        }
    )
    by_id = {e.id: e for e in load_policy_dir(directory).policy.entitlements}
    assert by_id["dev-readonly"].region is None
    assert by_id["eu-readonly"].region == "eu-west-1"


@pytest.mark.parametrize("region", ["EU-WEST-1", "eu-west", "europe"])
def test_a_malformed_region_is_refused_at_its_line(write_policy: WritePolicy, region: str) -> None:
    directory = write_policy(**{"r.yaml": ENTITLEMENT + f"    region: {region}\n"})
    with pytest.raises(PolicyLoadError) as caught:
        load_policy_dir(directory)
    assert [str(i) for i in caught.value.errors] == [
        f"{directory / 'r.yaml'}:6: entitlements[0].region: {region!r} is not a valid AWS "
        "region; expected e.g. eu-west-1"
    ]
