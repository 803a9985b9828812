"""An activity test bed: the API bed's roles and policy plus the shipped detection rules, and a
moto bucket CloudTrail writes into, with the app configured to read it."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from apibed import Bed, create_bed_roles, write_policy
from schedbed import app_config
from trailbed import IssuedKey, Trail

from broker import create_app
from broker.activity.ingest import CloudTrailIngestor
from broker.activity.jobs import build_ingestor
from broker.db import Database, get_database
from broker.models import IssuedSession, utcnow

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_RULES = ROOT / "policies" / "detections.yaml"


@dataclass
class ActivityBed(Bed):
    """The API bed with a trail bucket the app is configured to read."""

    trail: Trail | None = None

    def key_of(self, issued: dict[str, Any]) -> IssuedKey:
        """What CloudTrail shows of a session the API issued."""
        with get_database(self.app).read_session() as session:
            row = session.get_one(IssuedSession, issued["session_id"])
            return IssuedKey(
                row.access_key_id, row.role_arn, row.role_session_name, row.source_identity
            )

    def ingestor(self, holder: str = "node-a") -> CloudTrailIngestor:
        """A CloudTrail reader as a scheduler node builds it."""
        found = build_ingestor(self.app, clock=utcnow, holder=holder)
        assert found is not None
        return found


def make_bed(
    database: Database, moto_server: Any, tmp_path: Path, *, queue: bool = False, **settings: Any
) -> ActivityBed:
    """Roles, the policy with the shipped detection rules, a bucket (announcing new files on an
    SQS queue when ``queue``), and the app reading it."""
    roles = create_bed_roles(moto_server)
    policy_dir = tmp_path / "policies"
    write_policy(policy_dir, roles, utcnow() + timedelta(minutes=40))
    shutil.copy(SHIPPED_RULES, policy_dir / "detections.yaml")
    bucket = f"trail-{uuid.uuid4().hex[:12]}"
    trail = Trail(moto_server.client("s3"), bucket)
    if queue:
        settings["CLOUDTRAIL_QUEUE_URL"] = trail.announce_to(moto_server.client("sqs"))
    config = app_config(database, moto_server, policy_dir, CLOUDTRAIL_BUCKET=bucket, **settings)
    app = create_app(config)
    return ActivityBed(app, app.test_client(), moto_server, roles, policy_dir, trail=trail)
