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


REFRESH_AHEAD = 0.2
"""In the last fifth of an entry's life, a request is answered from the cache while one
background thread asks IAM again: requests with steady traffic never wait on IAM."""


class RoleLimits:
    """A role's MaxSessionDuration from IAM, cached per role ARN for `ttl` seconds.

    Only the first lookup of a role (or one after its entry lapsed) waits on IAM; an entry near
    its end is refreshed in the background while it keeps answering (see REFRESH_AHEAD).
    """

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
        self._refreshing: set[str] = set()
        self._lock = threading.Lock()

    def max_session_duration(self, role_arn: str) -> int:
        """Seconds; 3,600 (IAM's default and smallest allowed value) when IAM cannot say."""
        now = self._clock()
        with self._lock:
            cached = self._cache.get(role_arn)
            fresh = cached is not None and cached[0] > now
            refresh = (
                cached is not None
                and fresh
                and cached[0] - now < self._ttl * REFRESH_AHEAD
                and role_arn not in self._refreshing
            )
            if refresh:
                self._refreshing.add(role_arn)
        if refresh:
            threading.Thread(
                target=self._refresh, args=(role_arn,), name="broker-role-limits", daemon=True
            ).start()
        if cached is not None and fresh:
            return cached[1]
        return self._fetch(role_arn)

    def _refresh(self, role_arn: str) -> None:
        try:
            self._fetch(role_arn)
        except Exception:  # noqa: BLE001 - the cached answer stays; the next request retries
            log.warning("could not refresh MaxSessionDuration of %s", role_arn, exc_info=True)
        finally:
            with self._lock:
                self._refreshing.discard(role_arn)

    def _fetch(self, role_arn: str) -> int:
        now = self._clock()
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
