"""Fixtures: a broker identity in moto and a factory for its target roles."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from doctorbed import BrokerUser, create_target_role, new_broker_user

from broker.iam_setup import TargetRole

MakeRole = Callable[..., TargetRole]


@pytest.fixture
def broker_user(moto_server: Any) -> BrokerUser:
    """A fresh IAM user with access keys; `get-caller-identity` with its keys names it."""
    return new_broker_user(moto_server)


@pytest.fixture
def make_role(moto_server: Any, broker_user: BrokerUser) -> MakeRole:
    """Create a target role in moto (see doctorbed.create_target_role for the options)."""
    iam = moto_server.client("iam")

    def make(**options: Any) -> TargetRole:
        return create_target_role(iam, broker_user.arn, **options)

    return make
