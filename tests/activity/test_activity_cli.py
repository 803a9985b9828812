"""`broker activity` answers what a person, grant or session did; calls after a grant ended are
flagged (and the use-after-grant-end rule fires); `broker activity ingest` reads now."""

from __future__ import annotations

import json
from datetime import timedelta

from activitybed import ActivityBed
from schedbed import issue
from trailbed import assume_role_record, call_record

from broker.activity.cli import activity_cli
from broker.models import utcnow


def _run(bed: ActivityBed, *args: str) -> str:
    result = bed.app.test_cli_runner().invoke(activity_cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_what_a_person_grant_and_session_did(bed: ActivityBed) -> None:
    alice_token = bed.token("alice@example.com", ("developers",))
    alice = issue(bed, alice_token, "app-read")
    bob = issue(bed, bed.token("bob@example.com", ("developers",)), "app-read")
    ka, kb = bed.key_of(alice), bed.key_of(bob)
    now = utcnow()
    assert bed.trail is not None
    bed.trail.put(
        [
            assume_role_record(ka, now - timedelta(minutes=2)),
            call_record(
                ka,
                now - timedelta(minutes=1),
                "s3.amazonaws.com",
                "GetObject",
                params={"bucketName": "app-bucket"},
            ),
            assume_role_record(kb, now - timedelta(minutes=2)),
            call_record(kb, now - timedelta(minutes=1), "s3.amazonaws.com", "ListBucket"),
        ],
        at=now - timedelta(minutes=1),
    )
    out = _run(bed, "ingest")
    assert out.startswith("1 file(s) read: 4 record(s), 4 attributed, 0 malformed")

    # The grant is revoked; a later call with its key (before the deny lands) is flagged.
    response = bed.call("POST", f"/grants/{alice['grant_id']}/revoke", alice_token, json={})
    assert response.status_code == 200, response.json
    later = utcnow() + timedelta(seconds=5)
    bed.trail.put([call_record(ka, later, "s3.amazonaws.com", "GetObject")], at=later)
    out = _run(bed, "ingest", "--no-queue")
    assert "1 detection(s)" in out

    mine = _run(bed, "show", "--person", "ALICE@example.com")
    lines = mine.strip().splitlines()
    assert len(lines) == 3 and all("alice@example.com" in line for line in lines)
    assert "s3:GetObject LATE" in lines[0] and "LATE" not in lines[1] + lines[2]
    assert "bucketName=app-bucket" in lines[1]

    by_grant = json.loads(_run(bed, "show", "--grant", bob["grant_id"], "--format", "json"))
    assert [r["action"] for r in by_grant] == ["s3:ListBucket", "sts:AssumeRole"]
    assert {r["person"] for r in by_grant} == {"bob@example.com"}
    by_key = json.loads(_run(bed, "show", "--session", kb.access_key_id, "--format", "json"))
    assert by_key == by_grant

    flagged = json.loads(_run(bed, "show", "--flagged", "--format", "json"))
    assert [(r["person"], r["after_grant_end"]) for r in flagged] == [("alice@example.com", True)]
    csv_text = _run(bed, "show", "--flagged", "--format", "csv")
    assert csv_text.splitlines()[0].startswith("event_time,person,action")

    detections = json.loads(_run(bed, "detections", "--format", "json"))
    assert [(d["rule"], d["person"], d["outcome"]) for d in detections] == [
        ("use-after-grant-end", "alice@example.com", "alerted")
    ]
    assert "after its grant ended" in detections[0]["reasons"][0]
    assert "[critical] use-after-grant-end" in _run(bed, "detections")
