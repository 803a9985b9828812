"""The scheduler process: grants end on time, revocations reach AWS, exactly once."""

from __future__ import annotations

from broker.scheduler.cli import scheduler_command
from broker.scheduler.core import Scheduler, SweepResult
from broker.scheduler.lease import SchedulerAlreadyRunning

__all__ = ["Scheduler", "SchedulerAlreadyRunning", "SweepResult", "scheduler_command"]
