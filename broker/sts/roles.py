"""A role's maximum session duration, read from IAM and cached."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
)

from broker.aws import parse_role_arn
from broker.sts.limits import (
    DEFAULT_ROLE_MAX_DURATION,
)

log = logging.getLogger(__name__)


class RoleLimits:
    """A role's MaxSessionDuration from IAM, cached per role ARN for `ttl` seconds."""

    def __init__(
        self,
        iam_client: Any,
        *,
        ttl: float = 300.0,
        failure_ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._iam = iam_client
        self._ttl = ttl
        self._failure_ttl = failure_ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def max_session_duration(self, role_arn: str) -> int:
        """Seconds; 3,600 (IAM's default and smallest allowed value) when IAM cannot say."""
        now = self._clock()
        with self._lock:
            cached = self._cache.get(role_arn)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            name = parse_role_arn(role_arn).name
            role = self._iam.get_role(RoleName=name)["Role"]
            seconds = int(role.get("MaxSessionDuration", DEFAULT_ROLE_MAX_DURATION))
            expires = now + self._ttl
        except (ValueError, ClientError, BotoCoreError, KeyError) as exc:
            # 3,600 s is the floor IAM allows for MaxSessionDuration, so it is always safe.
            log.warning(
                "could not read MaxSessionDuration of %s (%s); assuming %d s",
                role_arn,
                exc,
                DEFAULT_ROLE_MAX_DURATION,
            )
            seconds = DEFAULT_ROLE_MAX_DURATION
            expires = now + self._failure_ttl
        with self._lock:
            self._cache[role_arn] = (expires, seconds)
        return seconds
