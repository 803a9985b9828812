"""The scheduler: ends grants on time, lapses requests, reconciles, revokes on AWS, signs.

Time-critical work runs on APScheduler 3 timers held in memory (never a shared job store): each
sweep loads the grants expiring within the next window and sets a ``date`` job at each one's
exact ``expires_at`` (job id = grant id), so a grant ends at its time, not at the next sweep.
The database, never the timers, decides what is due: a job only triggers an *expiry pass*
(every active grant past ``expires_at``, claimed with ``FOR UPDATE SKIP LOCKED``) followed by
a *revocation pass* (:mod:`broker.scheduler.revocations`). Lost timers (a crash, a restart) cost
nothing: the first sweep after start handles everything that came due meanwhile.

A revocation queued elsewhere (a revoke or cut-off in the web app or the API) wakes the
revocation pass at once (:mod:`broker.wakeup`: PostgreSQL ``NOTIFY``, or a short poll on
SQLite) instead of waiting for the next sweep. Reconcile runs as a job of its own, so however
long it takes it never delays a revocation pass.

One process or many: on PostgreSQL rows are claimed with ``SKIP LOCKED`` and per-role work with
advisory locks, so each grant is expired, revoked and audited once whatever the number of
schedulers; on SQLite a lease makes a second scheduler refuse to start (:mod:`.lease`).

The policy directory is checked every ``POLICY_RELOAD_SECONDS`` and on SIGHUP
(:meth:`Scheduler.check_policy`): a valid change is in force for the next pass, a bad one is
refused and reported while the last good policy stays (:mod:`broker.policy_store`).

Process-local counters (job runs and failures) and the policy this process serves are kept in a
registry of this scheduler and served on ``SCHEDULER_METRICS_PORT`` when set; the web
``/metrics`` reads the database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import select

from broker.activity.jobs import add_activity_jobs
from broker.audit.checkpoints import load_signing_key, sign_head
from broker.clock import DatabaseClock
from broker.db import Database, get_database
from broker.grants import GrantService
from broker.locks import try_xact_lock
from broker.metrics import PolicyCollector
from broker.models import Grant, GrantStatus
from broker.policy_store import get_policy, policy_store
from broker.revocation import RoleRevoker
from broker.scheduler.lease import Lease
from broker.scheduler.revocations import PassResult, RevocationApplier
from broker.services import services
from broker.wakeup import Listener

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """What one sweep did."""

    expired: list[str] = field(default_factory=list)
    contractors_ended: list[str] = field(default_factory=list)
    lapsed: list[str] = field(default_factory=list)
    reconciled: list[str] = field(default_factory=list)
    scheduled: int = 0
    revocations: PassResult = field(default_factory=PassResult)


class Scheduler:
    """The broker's scheduler for one app: ``start()`` in the background, ``stop()``.

    Every pass is also a public method (``expire_due``, ``revoke``, ``sweep``), so tests and
    benchmarks drive the same code synchronously with an injected clock and IAM client.
    """

    def __init__(
        self,
        app: Flask,
        *,
        clock: Callable[[], datetime] | None = None,
        iam_client: Any = None,
        sweep_seconds: float | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        cfg = app.config
        self.app = app
        self.db: Database = get_database(app)
        # "Now" is the database's: a host running fast must not end grants or drop denies early.
        clock = clock or DatabaseClock(self.db)
        self.clock = clock
        self.sweep_seconds = float(sweep_seconds or cfg.get("SCHEDULER_SWEEP_SECONDS", 5.0))
        self.window = timedelta(seconds=int(cfg.get("SCHEDULER_WINDOW_SECONDS", 300)))
        self.batch = int(cfg.get("SCHEDULER_BATCH_SIZE", 200))
        # A breath between full batches lets web requests take the (SQLite) write lock.
        self.batch_pause = float(cfg.get("SCHEDULER_BATCH_PAUSE_SECONDS", 0.01))
        self.pending_ttl = timedelta(seconds=int(cfg.get("PENDING_REQUEST_TTL_SECONDS", 86400)))
        self.checkpoint_seconds = int(cfg.get("CHECKPOINT_SECONDS", 300))
        self.metrics_port: int | None = cfg.get("SCHEDULER_METRICS_PORT")
        # Loopback unless told otherwise: a scrape agent on the host, not the whole network.
        self.metrics_address = str(cfg.get("SCHEDULER_METRICS_ADDRESS") or "127.0.0.1")
        self.policy = policy_store(app)
        self.policy_seconds = float(cfg.get("POLICY_RELOAD_SECONDS", 10.0))
        iam = iam_client if iam_client is not None else services(app).iam
        revoker_args: dict[str, Any] = {"clock": clock, "max_attempts": 3, "base_delay": 0.5}
        if sleep is not None:
            revoker_args["sleep"] = sleep
        self.revoker = RoleRevoker(iam, **revoker_args)
        self.applier = RevocationApplier(
            self.db,
            self.revoker,
            clock=clock,
            policy_version=lambda: get_policy(app).version,
            retry_max=timedelta(seconds=int(cfg.get("REVOCATION_RETRY_MAX_SECONDS", 300))),
        )
        self.lease = Lease(
            self.db,
            clock=clock,
            stale_after=timedelta(seconds=int(cfg.get("SCHEDULER_LEASE_STALE_SECONDS", 30))),
        )
        key_file = cfg.get("AUDIT_SIGNING_KEY_FILE")
        self.signing_key: Ed25519PrivateKey | None = (
            load_signing_key(key_file) if key_file else None
        )
        self.registry = CollectorRegistry(auto_describe=True)
        self.runs = Counter(
            "broker_scheduler_job_runs", "Scheduler job runs.", ["job"], registry=self.registry
        )
        self.failures = Counter(
            "broker_scheduler_job_failures",
            "Scheduler job runs that raised.",
            ["job"],
            registry=self.registry,
        )
        self.registry.register(PolicyCollector(self.policy))
        if isinstance(clock, DatabaseClock):
            skew = Gauge(
                "broker_clock_skew_seconds",
                "How far this host's clock is behind (+) or ahead (-) of the database's.",
                registry=self.registry,
            )
            skew.set_function(lambda: clock.skew_seconds)
        self._expiry_lock = threading.Lock()
        self._revoke_lock = threading.Lock()
        self._expiry_gate, self._expiry_dirty = threading.Lock(), threading.Event()
        self._revoke_gate, self._revoke_dirty = threading.Lock(), threading.Event()
        self._expired_through = datetime.min.replace(tzinfo=UTC)
        self._timers: dict[str, datetime] = {}
        self._timers_lock = threading.Lock()
        self._aps: BackgroundScheduler | None = None
        # A revoke or cut-off committed anywhere wakes the revocation pass (NOTIFY or a poll).
        self.listener = Listener(self.db, self._on_wakeup, clock=clock)
        self._metrics_server: Any = None
        self.stopped = threading.Event()
        self._stopping = threading.Event()

    # -- passes (synchronous) ---------------------------------------------------------------

    def grants(self) -> GrantService:
        """A GrantService over the policy in force now (reloads are picked up)."""
        shared = services(self.app)
        return GrantService(
            self.db, get_policy(self.app), shared.issuer, shared.role_limits, clock=self.clock
        )

    def check_policy(self, *, force: bool = False) -> bool:
        """Look at the policy directory now; True when a new policy was put in force."""
        return self.policy.check(force=force, client="scheduler")

    def expire_due(self) -> list[str]:
        """End every active grant past its expiry, in batches; return the ids this node ended."""
        with self._expiry_lock:
            started = self.clock()
            service = self.grants()
            ended: list[str] = []
            while True:
                batch = service.expire_due(limit=self.batch)
                ended.extend(batch)
                if len(batch) < self.batch:
                    break
                if self.db.dialect == "sqlite":  # PostgreSQL queues writers on row locks
                    time.sleep(self.batch_pause)
            self._expired_through = max(self._expired_through, started)
        if ended:
            log.info("expired %d grant(s)", len(ended))
        return ended

    def revoke(self) -> PassResult:
        """Put every due revocation in place on AWS (one write per role)."""
        with self._revoke_lock:
            return self.applier.run()

    def _coalesced(
        self, lock: threading.Lock, dirty: threading.Event, work: Callable[[], Any]
    ) -> None:
        """Run ``work`` now, or, when a run is in progress, make that run go round once more.

        Timers firing close together (a thousand grants ending in the same minute) then cost
        a few passes, not one pass each queued behind the others.
        """
        dirty.set()
        while dirty.is_set():
            if not lock.acquire(blocking=False):
                return  # the running pass sees the flag and loops
            try:
                dirty.clear()
                work()
            finally:
                lock.release()

    def sweep(self) -> SweepResult:
        """Everything periodic at once: expire, contractors, lapse, reconcile, timers, revoke.

        The running scheduler does the same work as separate jobs (see :meth:`start`): the
        sweep without reconcile, reconcile on its own thread, and the revocation pass also on
        every wake-up, so a slow step never holds up a revocation.
        """
        return self._sweep(reconcile=True)

    def _sweep(self, *, reconcile: bool) -> SweepResult:
        result = SweepResult()
        result.expired = self.expire_due()
        service = self.grants()
        result.contractors_ended = _drain(
            lambda: service.end_contractors_past_end_date(limit=self.batch), self.batch
        )
        result.lapsed = _drain(
            lambda: service.lapse_pending(self.pending_ttl, limit=self.batch), self.batch
        )
        if reconcile:
            result.reconciled = service.reconcile()
        result.scheduled = self.schedule_upcoming()
        result.revocations = self.revoke()
        return result

    def reconcile(self) -> list[str]:
        """Queue denies for uncovered live sessions; put them in place at once if any."""
        queued = self.grants().reconcile()
        if queued:
            self.wake()
        return queued

    def wake(self) -> None:
        """Run a revocation pass now (or make the running one go round again)."""
        self._coalesced(self._revoke_gate, self._revoke_dirty, self.revoke)

    def checkpoint(self) -> bool:
        """Sign the audit chain head (one scheduler at a time); True when a checkpoint was added."""
        if self.signing_key is None:
            return False
        with self.db.session() as session:
            if not try_xact_lock(session, "broker:checkpoint"):
                return False
            return sign_head(session, self.signing_key, clock=self.clock) is not None

    def schedule_upcoming(self) -> int:
        """Set a timer at the exact expiry of each grant ending within the window."""
        if self._aps is None:
            return 0
        now = self.clock()
        with self.db.session() as session:
            rows = session.execute(
                select(Grant.id, Grant.expires_at).where(
                    Grant.status == GrantStatus.ACTIVE,
                    Grant.expires_at > now,
                    Grant.expires_at <= now + self.window,
                )
            ).all()
        added = 0
        for grant_id, expires_at in rows:
            if expires_at is None:
                continue
            with self._timers_lock:
                if self._timers.get(grant_id) == expires_at:
                    continue
                self._timers[grant_id] = expires_at
            self._aps.add_job(
                self._on_expiry,
                trigger="date",
                run_date=self._host_time(expires_at),
                args=(grant_id, expires_at),
                id=grant_id,
                name=f"expire {grant_id}",
                replace_existing=True,
            )
            added += 1
        return added

    def _host_time(self, moment: datetime) -> datetime:
        """When this host's clock (which APScheduler's timers follow) reaches `moment`."""
        to_host = getattr(self.clock, "to_host", None)
        return to_host(moment) if callable(to_host) else moment

    # -- running in the background ----------------------------------------------------------

    def start(self) -> None:
        """Take the lease (SQLite: or refuse) and start the timers; the first sweep runs now."""
        if self._aps is not None:
            return
        self.lease.acquire()
        self._stopping.clear()
        aps = BackgroundScheduler(
            jobstores={"default": MemoryJobStore()},
            executors={"default": ThreadPoolExecutor(max_workers=4)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        self._aps = aps
        now = datetime.now(UTC)
        aps.add_job(
            self._job("sweep", lambda: self._sweep(reconcile=False)),
            "interval",
            seconds=self.sweep_seconds,
            id="sweep",
            next_run_time=now,
        )
        aps.add_job(
            self._job("reconcile", self.reconcile),
            "interval",
            seconds=self.sweep_seconds,
            id="reconcile",
            next_run_time=now,
        )
        aps.add_job(
            self._job("policy", self.check_policy),
            "interval",
            seconds=self.policy_seconds,
            id="policy",
            next_run_time=now,
        )
        beat = min(self.sweep_seconds, self.lease.stale_after.total_seconds() / 3)
        aps.add_job(self._job("lease", self._heartbeat), "interval", seconds=beat, id="lease")
        if self.signing_key is not None:
            aps.add_job(
                self._job("checkpoint", self.checkpoint),
                "interval",
                seconds=self.checkpoint_seconds,
                id="checkpoint",
            )
        add_activity_jobs(self, aps)  # CloudTrail and notifications, where configured
        if self.metrics_port:
            from prometheus_client import start_http_server

            self._metrics_server, _ = start_http_server(
                self.metrics_port, addr=self.metrics_address, registry=self.registry
            )
        aps.start()
        self.listener.start()
        log.info(
            "scheduler started (%s, holder %s, sweep every %s s)",
            self.db.dialect,
            self.lease.holder,
            self.sweep_seconds,
        )

    def stop(self) -> None:
        """Stop the timers, wait for running jobs, give the lease back."""
        aps, self._aps = self._aps, None
        if aps is None:
            return
        self._stopping.set()  # timers already handed to the pool return at once
        self.listener.stop()
        aps.remove_all_jobs()
        aps.shutdown(wait=True)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None
        try:
            self.lease.release()
        except Exception:  # noqa: BLE001 - a stale lease only delays the next start
            log.warning("could not release the scheduler lease", exc_info=True)
        self.stopped.set()
        log.info("scheduler stopped")

    @property
    def running(self) -> bool:
        """Whether the timers are running."""
        return self._aps is not None

    def _on_expiry(self, grant_id: str, expires_at: datetime) -> None:
        if self._stopping.is_set():
            return  # whatever is due is handled by the next scheduler's first sweep
        with self._timers_lock:
            if self._timers.get(grant_id) == expires_at:
                del self._timers[grant_id]
        if expires_at <= self._expired_through:
            return  # an expiry pass that started after this time already ended it
        self._job("expiry", self._expire_and_revoke)()

    def _expire_and_revoke(self) -> None:
        ended: list[str] = []
        self._coalesced(
            self._expiry_gate, self._expiry_dirty, lambda: ended.extend(self.expire_due())
        )
        if ended:
            self.wake()

    def _on_wakeup(self) -> None:
        if not self._stopping.is_set():
            self._job("wakeup", self.wake)()

    def _heartbeat(self) -> None:
        if not self.lease.renew():
            log.error("scheduler lease %s was taken over; stopping", self.lease.name)
            threading.Thread(target=self.stop, daemon=True).start()

    def _job(self, name: str, func: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            self.runs.labels(job=name).inc()
            try:
                func()
            except Exception:
                self.failures.labels(job=name).inc()
                log.exception("scheduler job %s failed", name)

        return run


def _drain(step: Callable[[], list[str]], batch: int) -> list[str]:
    done: list[str] = []
    while True:
        ids = step()
        done.extend(ids)
        if len(ids) < batch:
            return done
