"""`broker keys report` against moto: IAM users with keys of various ages and last uses, mapped to
people the policy covers, with a suggested action; CSV and JSON; nothing changed in IAM."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import timedelta
from typing import Any

from activitybed import ActivityBed
from moto.iam.models import AccessKeyLastUsed, iam_backends
from schedbed import issue

from broker.activity.cli import keys_cli
from broker.models import utcnow

ACCOUNT = "123456789012"


def _user(iam: Any, name: str, path: str, *, tags: dict[str, str] | None = None) -> None:
    iam.create_user(
        UserName=name,
        Path=path,
        Tags=[{"Key": k, "Value": v} for k, v in (tags or {}).items()],
    )


def _key(
    iam: Any,
    name: str,
    *,
    age_days: int,
    used_days_ago: int | None = None,
    service: str = "s3",
    region: str = "eu-west-1",
    inactive: bool = False,
) -> str:
    key_id = str(iam.create_access_key(UserName=name)["AccessKey"]["AccessKeyId"])
    if inactive:
        iam.update_access_key(UserName=name, AccessKeyId=key_id, Status="Inactive")
    # moto stamps keys "now"; age them in its backend (moto documents setting last_used).
    user = iam_backends[ACCOUNT]["aws"].get_user(name)
    stored = next(k for k in user.access_keys if k.access_key_id == key_id)
    now = utcnow().replace(tzinfo=None)
    stored.create_date = now - timedelta(days=age_days, hours=1)
    if used_days_ago is not None:
        stored.last_used = AccessKeyLastUsed(now - timedelta(days=used_days_ago), service, region)
    return key_id


def _report(bed: ActivityBed, *args: str) -> str:
    result = bed.app.test_cli_runner().invoke(keys_cli, ["report", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_keys_report_ages_last_use_people_and_suggestions(bed: ActivityBed) -> None:
    # alice has signed in to the broker (with her groups): the policy covers her.
    issue(bed, bed.token("alice@example.com", ("developers",)), "app-read")
    iam = bed.moto.client("iam")
    path = f"/keys-{uuid.uuid4().hex[:8]}/"
    tag = path.strip("/")
    _user(iam, f"alice-{tag}", path, tags={"email": "alice@example.com"})
    alice_key = _key(
        iam, f"alice-{tag}", age_days=30, used_days_ago=2, service="s3", region="us-east-1"
    )
    _user(iam, f"dana-{tag}@contractor.example", path)
    dana_key = _key(
        iam, f"dana-{tag}@contractor.example", age_days=400, used_days_ago=200, service="ec2"
    )
    _user(iam, f"ci-{tag}", path)
    ci_key = _key(iam, f"ci-{tag}", age_days=200, used_days_ago=1, service="ecr")
    _user(iam, f"bob-{tag}", path)
    bob_old = _key(iam, f"bob-{tag}", age_days=100, inactive=True)
    bob_new = _key(iam, f"bob-{tag}", age_days=30)

    rows = [
        r
        for r in json.loads(_report(bed, "--format", "json", "--email-domain", "example.com"))
        if tag in r["user_name"]
    ]
    by_key = {r["access_key_id"]: r for r in rows}
    assert set(by_key) == {alice_key, dana_key, ci_key, bob_old, bob_new}
    assert {r["account"] for r in rows} == {ACCOUNT}

    alice = by_key[alice_key]
    assert (alice["age_days"], alice["days_since_use"]) == (30, 2)
    assert (alice["last_used_service"], alice["last_used_region"]) == ("s3", "us-east-1")
    assert (alice["person"], alice["person_known"]) == ("alice@example.com", True)
    assert "app-read" in alice["covered_by"]
    assert alice["suggestion"].startswith("replace with broker access (app-read")

    dana = by_key[dana_key]
    assert (dana["age_days"], dana["days_since_use"]) == (400, 200)
    assert dana["person"] == f"dana-{tag}@contractor.example" and not dana["person_known"]
    assert dana["suggestion"] == "deactivate, then delete: unused for 200 days"

    ci = by_key[ci_key]
    assert ci["person"] == f"ci-{tag}@example.com" and ci["covered_by"] == []
    assert ci["suggestion"] == "rotate (200 days old) or move the workload to a role"

    assert by_key[bob_old]["status"] == "Inactive"
    assert by_key[bob_old]["suggestion"] == "delete: the key is inactive"
    assert by_key[bob_new]["last_used"] == "" and by_key[bob_new]["days_since_use"] is None
    assert by_key[bob_new]["suggestion"] == "delete: never used in 30 days"

    # CSV carries the same rows; without --email-domain a bare user name maps to nobody.
    table = list(csv.DictReader(io.StringIO(_report(bed, "--format", "csv"))))
    ci_row = next(r for r in table if r["access_key_id"] == ci_key)
    assert ci_row["person"] == "" and ci_row["age_days"] == "200"
    assert ci_row["suggestion"] == "rotate (200 days old) or move the workload to a role"
    assert "alice" in _report(bed)  # the table for a terminal

    # Read-only: every key is still there, with its status.
    statuses = {
        k["AccessKeyId"]: k["Status"]
        for u in (f"alice-{tag}", f"bob-{tag}", f"ci-{tag}")
        for k in iam.list_access_keys(UserName=u)["AccessKeyMetadata"]
    }
    assert statuses == {
        alice_key: "Active",
        ci_key: "Active",
        bob_old: "Inactive",
        bob_new: "Active",
    }
