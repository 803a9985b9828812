"""For `broker doctor` and `broker iam-policies` tests: a broker identity and roles in moto.

The broker is an IAM user with access keys (``get-caller-identity`` with its keys names it, as
a real broker's credentials would); target roles are created trusted exactly as
`broker iam-policies` says, or broken on purpose.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from simulated_iam import SimulatingIam

from broker.iam_setup import TargetRole, broker_policy, trust_policy
from broker.revocation import POLICY_NAME

ACCOUNT = "123456789012"  # moto's default account


def unique(prefix: str) -> str:
    """A name no other test uses (moto's state lives as long as the session's server)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class BrokerUser:
    """The broker as an IAM user: its ARN and clients that act as it."""

    arn: str
    name: str
    access_key_id: str
    secret_access_key: str
    sts: Any
    iam: SimulatingIam
    moto_iam: Any

    def allow(self, document: dict[str, Any]) -> None:
        """Set the broker's identity policy."""
        self.moto_iam.put_user_policy(
            UserName=self.name, PolicyName="broker", PolicyDocument=json.dumps(document)
        )

    def allow_roles(self, *role_arns: str) -> None:
        """Give it the policy `broker iam-policies` prints for these roles."""
        self.allow(broker_policy(role_arns, self.arn))


def new_broker_user(moto: Any) -> BrokerUser:
    """A fresh IAM user with access keys, and clients using them."""
    iam = moto.client("iam")
    name = unique("broker")
    arn = iam.create_user(UserName=name)["User"]["Arn"]
    key = iam.create_access_key(UserName=name)["AccessKey"]
    creds = {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}
    return BrokerUser(
        arn=arn,
        name=name,
        access_key_id=key["AccessKeyId"],
        secret_access_key=key["SecretAccessKey"],
        sts=moto.client("sts", **creds),
        iam=SimulatingIam(moto.client("iam", **creds)),
        moto_iam=iam,
    )


def create_target_role(
    iam: Any,
    broker_arn: str,
    *,
    name: str | None = None,
    trust: dict[str, Any] | None = None,
    max_session: int = 3600,
    durations: tuple[timedelta, ...] = (timedelta(hours=1),),
    path: str = "/",
    revocation: dict[str, Any] | None = None,
) -> TargetRole:
    """Create a role; by default trusted exactly as `broker iam-policies` says."""
    name = name or unique("target")
    role = iam.create_role(
        RoleName=name,
        Path=path,
        AssumeRolePolicyDocument=json.dumps(trust or trust_policy(broker_arn)),
        MaxSessionDuration=max_session,
    )["Role"]
    if revocation is not None:
        iam.put_role_policy(
            RoleName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(revocation)
        )
    entitlements = tuple((f"{name}-{i}", d) for i, d in enumerate(durations))
    return TargetRole(str(role["Arn"]), entitlements)
