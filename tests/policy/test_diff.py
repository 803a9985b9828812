from __future__ import annotations

import copy
import json
import random
import re
import subprocess
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from broker.cli.policy import policy
from broker.policy import Evaluator, Identity, PolicySet, RequestContext
from broker.policy.diff import (
    Direction,
    DirectoryPerson,
    diff_policies,
    load_directory,
    render_json,
    render_markdown,
    summary,
)
from broker.policy.issues import PolicyLoadError

AT = "2026-11-01T00:00:00"

PEOPLE = textwrap.dedent("""\
    version: 1
    people:
      - match: {emails: ["*@contractor.example"]}
        kind: contractor
      - match: {email: dana@contractor.example}
        valid_until: 2030-06-30
        sponsor: lead@example.com
    auditors: {groups: [compliance]}
    admins: {groups: [security-admins]}
""")
DENY = textwrap.dedent("""\
    version: 1
    deny:
      - match: {kinds: [contractor]}
        entitlements: ["prod-*"]
        reason: Contractors never get production access
""")
ENTITLEMENTS = textwrap.dedent("""\
    version: 1
    entitlements:
      - id: dev-readonly
        role_arn: arn:aws:iam::111122223333:role/dev-readonly
        allow: {groups: [developers, sre]}
      - id: prod-readonly
        role_arn: arn:aws:iam::111122223333:role/prod-readonly
        allow: {groups: [sre]}
        max_duration: 1h
        max_grant: 8h
        require_mfa: true
        session_policy:
          Version: "2012-10-17"
          Statement:
            - Sid: Read
              Effect: Allow
              Action: ["s3:Get*", "s3:List*"]
              Resource: "*"
      - id: prod-admin
        role_arn: arn:aws:iam::111122223333:role/prod-admin
        allow: {groups: [sre]}
        require_mfa: true
        sensitive: true
        approval:
          approvers: {groups: [security]}
""")
BASE = {"people.yaml": PEOPLE, "deny.yaml": DENY, "entitlements.yaml": ENTITLEMENTS}
DIRECTORY = """\
- {email: sam@example.com, groups: [sre]}
- {email: ola@example.com, groups: [sre, security]}
- {email: devi@example.com, groups: [developers]}
- {email: pat@example.com, groups: [platform]}
- {email: sec@example.com, groups: [security]}
- {email: oncall@example.com, groups: [security-oncall]}
- {email: dana@contractor.example, groups: [sre]}
"""

Edit = tuple[str, str, str]  # file, text to find (once), replacement


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def edited(edits: Sequence[Edit]) -> dict[str, str]:
    files = dict(BASE)
    for name, before, after in edits:
        assert files[name].count(before) == 1, before
        files[name] = files[name].replace(before, after)
    return files


def make_pair(tmp_path: Path, edits: Sequence[Edit]) -> tuple[Path, Path]:
    return write(tmp_path / "old", BASE), write(tmp_path / "new", edited(edits))


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(policy, ["diff", *map(str, args), "--at", AT])
    return result.exit_code, result.stdout, result.stderr


def md(text: str) -> str:
    """Text as the Markdown output escapes it."""
    return re.sub(r"([\\`*_\[\]<>|~#])", r"\\\1", text)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    path = tmp_path / "people.yaml"
    path.write_text(DIRECTORY)
    return path


@dataclass
class Scenario:
    edits: list[Edit]
    says: str
    """The change, as text and Markdown state it (with or without a directory)."""
    people: list[str]
    """Lines the text and Markdown outputs give with the directory."""
    in_json: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    """Per entitlement id, lists of people the JSON output must hold exactly."""
    persons: list[str] = field(default_factory=list)
    """Emails of people whose own facts (kind, end date) changed."""
    code: int = 0
    summary: str = ""


SCENARIOS = {
    "group added to an allow rule": Scenario(
        edits=[
            (
                "entitlements.yaml",
                "allow: {groups: [sre]}\n    max_duration: 1h",
                "allow: {groups: [sre, platform]}\n    max_duration: 1h",
            )
        ],
        says="allow: group sre → group platform or sre (+ group platform)",
        people=["+1 person gains it: pat@example.com"],
        in_json={"prod-readonly": {"gained": ["pat@example.com"], "lost": []}},
        summary="+1 person gains prod-readonly",
    ),
    "deny rule removed": Scenario(
        edits=[("deny.yaml", DENY.split("deny:\n")[1], ""), ("deny.yaml", "deny:", "deny: []")],
        says="kind contractor no longer denied prod-*",
        people=["+1 person gains it: dana@contractor.example"],
        in_json={
            "prod-admin": {"gained": ["dana@contractor.example"]},
            "prod-readonly": {"gained": ["dana@contractor.example"]},
        },
        code=3,  # prod-admin is sensitive
        summary="+1 person gains prod-admin",
    ),
    "MFA requirement dropped": Scenario(
        edits=[
            (
                "entitlements.yaml",
                "max_grant: 8h\n    require_mfa: true",
                "max_grant: 8h\n    require_mfa: false",
            )
        ],
        says="MFA no longer required",
        people=["2 people keep it, on the new terms: ola@example.com, sam@example.com"],
        in_json={"prod-readonly": {"affected": ["ola@example.com", "sam@example.com"]}},
        summary="1 entitlement loses MFA",
    ),
    "max duration raised": Scenario(
        edits=[("entitlements.yaml", "max_duration: 1h", "max_duration: 4h")],
        says="max session 1h → 4h",
        people=["2 people keep it, on the new terms: ola@example.com, sam@example.com"],
        in_json={"prod-readonly": {"affected": ["ola@example.com", "sam@example.com"]}},
        summary="1 entitlement allows longer sessions",
    ),
    "approver group changed": Scenario(
        edits=[("entitlements.yaml", "groups: [security]}", "groups: [security-oncall]}")],
        says=(
            "approvers: group security → group security-oncall "
            "(+ group security-oncall; − group security)"
        ),
        people=[
            "+1 person may now approve it: oncall@example.com",
            "−2 people may no longer approve it: ola@example.com, sec@example.com",
        ],
        in_json={
            "prod-admin": {
                "approvers_gained": ["oncall@example.com"],
                "approvers_lost": ["ola@example.com", "sec@example.com"],
                "gained": [],
            }
        },
        code=3,  # another group may approve a sensitive entitlement
        summary="1 entitlement has more approvers",
    ),
    "contractor's valid_until extended": Scenario(
        edits=[("people.yaml", "valid_until: 2030-06-30", "valid_until: 2030-12-31")],
        says="extended 2030-06-30 → 2030-12-31",
        people=[],
        persons=["dana@contractor.example"],
        summary="1 end date moved",
    ),
    "session policy statement widened": Scenario(
        edits=[("entitlements.yaml", '["s3:Get*", "s3:List*"]', '["s3:*", "s3:List*"]')],
        says="session policy statement Read: Action + s3:* − s3:Get*",
        people=["2 people keep it, on the new terms: ola@example.com, sam@example.com"],
        in_json={"prod-readonly": {"affected": ["ola@example.com", "sam@example.com"]}},
        summary="1 entitlement widens its session policy",
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_each_change_appears_in_every_format(name: str, tmp_path: Path, directory: Path) -> None:
    scenario = SCENARIOS[name]
    old, new = make_pair(tmp_path, scenario.edits)

    code, text, err = run(old, new)
    assert code == scenario.code, err
    assert scenario.says in text
    assert "No directory given: changes are stated per rule" in text
    code, markdown, _ = run(old, new, "--format", "markdown")
    assert code == scenario.code
    assert md(scenario.says) in markdown

    code, text, err = run(old, new, "--directory", directory)
    assert code == scenario.code, err
    summary = text.splitlines()[0]
    assert scenario.summary in summary
    assert scenario.says in text
    for line in scenario.people:
        assert f"\n  {line}" in text
    for email in scenario.persons:
        assert f"\nperson {email}\n  widens   {scenario.says}\n" in text
    code, markdown, _ = run(old, new, "--directory", directory, "--format", "markdown")
    assert code == scenario.code
    assert f"**{md(summary)}**" in markdown
    assert md(scenario.says) in markdown
    for line in scenario.people:
        assert md(line) in markdown
    for email in scenario.persons:
        assert f"#### person {md(email)}\n\n- **widens**: {md(scenario.says)}" in markdown
    assert ("[!WARNING]" in markdown) == (scenario.code == 3)

    code, out, _ = run(old, new, "--directory", directory, "--format", "json")
    assert code == scenario.code
    document = json.loads(out)
    assert document["exit_code"] == scenario.code
    assert document["summary"] == summary
    assert document["directory_size"] == 7
    said = [
        change["text"]
        for record in document["entitlements"] + document["rules"] + document["people"]
        for change in record["changes"]
    ]
    assert scenario.says in said
    entitlements = {e["id"]: e for e in document["entitlements"]}
    for ent_id, lists in scenario.in_json.items():
        for key, emails in lists.items():
            assert entitlements[ent_id][key] == emails, (ent_id, key)
    assert [p["email"] for p in document["people"]] == scenario.persons
    assert bool(document["risks"]) == (scenario.code == 3)


@pytest.mark.parametrize("output_format", ["text", "markdown", "json"])
def test_identical_sets_give_an_empty_diff(
    output_format: str, tmp_path: Path, directory: Path
) -> None:
    old, new = make_pair(tmp_path, [])
    for extra in ((), ("--directory", str(directory))):
        code, out, err = run(old, new, "--format", output_format, *extra)
        assert (code, err) == (0, "")
        if output_format == "json":
            document = json.loads(out)
            assert document["summary"] == "No change in access."
            assert document["entitlements"] == document["rules"] == document["people"] == []
            assert document["exit_code"] == 0
        else:
            assert "No change in access." in out
            assert "changed" not in out


def test_a_sensitive_glob_makes_a_widened_entitlement_risky(tmp_path: Path) -> None:
    old, new = make_pair(tmp_path, SCENARIOS["session policy statement widened"].edits)
    assert run(old, new)[0] == 0
    code, text, _ = run(old, new, "--sensitive", "prod-*")
    assert code == 3
    assert "Access widens on sensitive entitlements (exit code 3):" in text
    assert "  prod-readonly: session policy statement Read: Action + s3:* − s3:Get*" in text
    assert "prod-readonly (sensitive) changed, entitlements.yaml:6" in text
    code, out, _ = run(old, new, "--sensitive", "prod-*", "--format", "json")
    assert (code, json.loads(out)["exit_code"]) == (3, 3)


def test_narrowing_a_sensitive_entitlement_is_not_risky(tmp_path: Path, directory: Path) -> None:
    old, new = make_pair(
        tmp_path,
        [("entitlements.yaml", "sensitive: true", "sensitive: true\n    max_duration: 30m")],
    )
    code, text, _ = run(old, new, "--directory", directory)
    assert code == 0
    assert "narrows  max session 1h → 30m" in text
    assert "1 entitlement narrowed" in text.splitlines()[0]


def test_dropping_the_sensitive_mark_is_itself_risky(tmp_path: Path) -> None:
    old, new = make_pair(tmp_path, [("entitlements.yaml", "    sensitive: true\n", "")])
    code, text, _ = run(old, new)
    assert code == 3
    assert "prod-admin: no longer marked sensitive" in text


def test_a_broken_new_side_is_refused_with_path_and_line(tmp_path: Path) -> None:
    old, new = make_pair(tmp_path, [("entitlements.yaml", "max_duration: 1h", "max_duration: 13h")])
    code, out, err = run(old, new)
    assert code == 1
    assert out == ""
    assert f"{new / 'entitlements.yaml'}:9: entitlements[1].max_duration: 13h is longer" in err
    assert err.rstrip().endswith(f"{new}: 1 error; not loaded, so no diff")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    old, new = make_pair(tmp_path, [])
    assert run(old, new, tmp_path)[0] == 2
    assert run(old, new, "--base", "main")[0] == 2
    assert run(old, new, "--format", "html")[0] == 2


def test_people_rule_changes_are_stated_per_person(tmp_path: Path, directory: Path) -> None:
    """A contractor made staff escapes the contractor deny rule: the diff shows whom it frees."""
    old, new = make_pair(
        tmp_path,
        [("people.yaml", "valid_until: 2030-06-30", "valid_until: 2030-06-30\n    kind: staff")],
    )
    code, text, _ = run(old, new, "--directory", directory)
    assert code == 3
    assert "person dana@contractor.example\n  changes  kind contractor → staff" in text
    assert "prod-admin (sensitive) who may use it changed, entitlements.yaml:19" in text
    assert "  +1 person gains it: dana@contractor.example" in text
    assert "  prod-admin: +1 person gains it\n" in text
    code, text, _ = run(old, new)
    assert code == 0  # per rule, a kind change cannot be tied to an entitlement
    assert "changes  kind (not set) → staff" in text


@pytest.mark.parametrize("suffix", ["json", "csv"])
def test_directory_as_json_or_csv(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"people.{suffix}"
    if suffix == "json":
        path.write_text(
            json.dumps(
                [
                    {"email": "pat@example.com", "groups": ["platform"], "kind": "staff"},
                    {"email": "sam@example.com", "groups": ["sre"]},
                ]
            )
        )
    else:
        path.write_text(
            "email,groups,kind,department\n"
            "pat@example.com,platform;ops,staff,eng\n"
            'sam@example.com,"sre,oncall",,\n'
        )
    pat, sam = load_directory(path)
    assert (pat.email, pat.kind) == ("pat@example.com", "staff")
    if suffix == "csv":
        assert pat.groups == {"platform", "ops"}
        assert pat.claims == {"department": "eng"}  # other columns are claims
        assert (sam.groups, sam.kind) == ({"sre", "oncall"}, None)
    old, new = make_pair(tmp_path, SCENARIOS["group added to an allow rule"].edits)
    code, text, _ = run(old, new, "--directory", path)
    assert code == 0
    assert "+1 person gains it: pat@example.com" in text


def test_directory_problems_are_reported_at_their_line(tmp_path: Path) -> None:
    path = tmp_path / "people.yaml"
    path.write_text(
        "- {email: sam@example.com, groups: [sre]}\n"
        "- {email: pat@example.com, kind: contracter}\n"
        "- {email: sam@example.com}\n"
        "- {email: x@example.com, team: a}\n"
    )
    with pytest.raises(PolicyLoadError) as raised:
        load_directory(path)
    assert [str(i) for i in raised.value.issues] == [
        f"{path}:2: pat@example.com: kind 'contracter' is not one of staff, contractor",
        f"{path}:3: sam@example.com appears twice (first at line 1)",
        f"{path}:4: unknown field 'team'; use email, groups, kind, claims",
    ]
    csv_path = tmp_path / "people.csv"
    csv_path.write_text("mail,groups\na@example.com,sre\n")
    old, new = make_pair(tmp_path, [])
    code, out, err = run(old, new, "--directory", csv_path)
    assert (code, out) == (1, "")
    assert f"{csv_path}:1: the header row needs an email column" in err


def _policy(**entitlement: object) -> Evaluator:
    document = {
        "version": 1,
        "entitlements": [
            {
                "id": "app",
                "role_arn": "arn:aws:iam::111122223333:role/app",
                "allow": {"groups": ["dev"]},
                **entitlement,
            }
        ],
    }
    return Evaluator(PolicySet.from_document(document))


def _statement(**fields: object) -> dict[str, object]:
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", **fields}]}


@pytest.mark.parametrize(
    ("before", "after", "direction", "text"),
    [
        ({"network": {"source_ip": ["10.0.0.0/8"]}}, {}, "widens", "no longer bound to a network"),
        (
            {"network": {"source_ip": ["10.0.0.0/8"]}},
            {"network": {"source_ip": ["10.1.0.0/16"]}},
            "narrows",
            "network: + 10.1.0.0/16 − 10.0.0.0/8",
        ),
        (
            {"network": {"source_ip": ["10.0.0.0/8"]}},
            {"network": {"source_ip": ["10.0.0.0/8"], "source_vpc": ["vpc-0a1b2c3d"]}},
            "widens",
            "network: + vpc-0a1b2c3d",
        ),
        (
            {"approval": {"approvers": {"groups": ["sec"]}}},
            {},
            "widens",
            "no longer needs approval (was by group sec)",
        ),
        ({}, {"approval": {"approvers": {"groups": ["sec"]}}}, "narrows", "now needs approval"),
        ({"require_reason": True}, {}, "widens", "a reason is no longer required"),
        ({"max_grant": "2h"}, {"max_grant": "8h"}, "widens", "grant length 2h → 8h"),
        (
            {"allow": {"groups": ["dev"], "kinds": ["staff"]}},
            {"allow": {"groups": ["dev"]}},
            "widens",
            "no longer requires kind staff",
        ),
        ({"allow": {"groups": ["dev"]}}, {"allow": {"everyone": True}}, "widens", "now everyone"),
        (
            {"role_arn": "arn:aws:iam::111122223333:role/app"},
            {"role_arn": "arn:aws:iam::111122223333:role/other"},
            "widens",
            "another role: review its permissions",
        ),
        (
            {"session_policy": _statement(Action="s3:*", Resource="*")},
            {"session_policy": _statement(Action="s3:Get*", Resource="*")},
            "narrows",
            "Action + s3:Get* − s3:*",
        ),
        (
            {"session_policy": _statement(Action="s3:Get?", Resource="*")},
            {"session_policy": _statement(Action="s3:Get*", Resource="*")},
            "widens",
            "Action + s3:Get* − s3:Get?",
        ),
        (
            {"session_policy": _statement(Action="s3:*", Resource="arn:aws:s3:::b/*")},
            {"session_policy": _statement(Action="s3:*", Resource="*")},
            "widens",
            "Resource + * − arn:aws:s3:::b/*",
        ),
        (
            {
                "session_policy": _statement(
                    Action="s3:*",
                    Resource="*",
                    Condition={"StringEquals": {"aws:RequestedRegion": "eu-west-1"}},
                )
            },
            {"session_policy": _statement(Action="s3:*", Resource="*")},
            "widens",
            "Condition changed",
        ),
        ({"session_policy": _statement(Action="s3:*", Resource="*")}, {}, "widens", "in full"),
        ({}, {"session_policy": _statement(Action="s3:*", Resource="*")}, "narrows", "added"),
        (
            {},
            {"managed_policy_arns": ["arn:aws:iam::aws:policy/ReadOnlyAccess"]},
            "narrows",
            "managed policies: + arn:aws:iam::aws:policy/ReadOnlyAccess",
        ),
        ({"region": "eu-west-1"}, {"region": "us-east-1"}, "changes", "eu-west-1 → us-east-1"),
        ({"sensitive": False}, {"sensitive": True}, "changes", "now marked sensitive"),
    ],
)
def test_conditions_are_compared_with_a_direction(
    before: dict[str, object], after: dict[str, object], direction: str, text: str
) -> None:
    result = diff_policies(_policy(**before), _policy(**after))
    (ent,) = result.entitlements
    (change,) = [c for c in ent.changes if text in c.text]
    assert change.direction is Direction(direction)


def test_the_published_schema_knows_the_sensitive_mark() -> None:
    result = CliRunner().invoke(policy, ["schema"])
    entitlement = json.loads(result.stdout)["$defs"]["Entitlement"]["properties"]
    assert entitlement["sensitive"]["type"] == "boolean"
    assert "policy diff" in entitlement["sensitive"]["description"]


def test_the_summary_counts_entitlements_not_changes() -> None:
    read = {"Sid": "Read", "Effect": "Allow", "Action": "s3:Get*", "Resource": "*"}
    logs = {"Sid": "Logs", "Effect": "Allow", "Action": "logs:Get*", "Resource": "*"}
    wider = [{**read, "Action": "s3:*"}, {**logs, "Action": "logs:*"}]
    before = _policy(session_policy={"Version": "2012-10-17", "Statement": [read, logs]})
    after = _policy(session_policy={"Version": "2012-10-17", "Statement": wider})
    result = diff_policies(before, after)
    assert len(result.entitlements[0].changes) == 2
    assert summary(result) == "1 entitlement widens its session policy"


def test_a_long_markdown_comment_is_cut_short() -> None:
    many = {
        "version": 1,
        "entitlements": [
            {"id": f"e-{n}", "role_arn": f"arn:aws:iam::111122223333:role/e{n}", "allow": m}
            for n in range(150)
            for m in [{"groups": ["a"]}]
        ],
    }
    wider = copy.deepcopy(many)
    for ent in wider["entitlements"]:
        ent["allow"] = {"groups": ["a", "b"]}
    result = diff_policies(
        Evaluator(PolicySet.from_document(many)), Evaluator(PolicySet.from_document(wider))
    )
    markdown = render_markdown(result)
    assert markdown.count("\n#### ") == 100
    assert markdown.rstrip().endswith(
        "… and 50 more changed things; `--format json` lists them all."
    )
    assert len(json.loads(render_json(result))["entitlements"]) == 150


def test_a_new_description_changes_no_access() -> None:
    assert diff_policies(_policy(description="old"), _policy(description="new")).empty


def test_a_removed_deny_statement_widens_the_session_policy() -> None:
    allow = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    deny = {"Sid": "NoDelete", "Effect": "Deny", "Action": "s3:Delete*", "Resource": "*"}
    before = _policy(session_policy={"Version": "2012-10-17", "Statement": [allow, deny]})
    after = _policy(session_policy={"Version": "2012-10-17", "Statement": [allow]})
    (ent,) = diff_policies(before, after).entitlements
    (change,) = ent.changes
    assert change.direction is Direction.WIDENS
    assert change.text == ("session policy statement NoDelete removed: Deny Action s3:Delete* on *")
    # Reordering statements, or the actions in one, changes nothing.
    turned = {**deny, "Action": ["s3:DeleteObject", "s3:DeleteBucket"]}
    before = _policy(session_policy={"Version": "2012-10-17", "Statement": [allow, turned]})
    turned = {**deny, "Action": ["s3:DeleteBucket", "s3:DeleteObject"]}
    after = _policy(session_policy={"Version": "2012-10-17", "Statement": [turned, allow]})
    assert diff_policies(before, after).empty


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def test_git_revisions_of_the_policy_directory(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    policies = write(repo / "policies", BASE)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "policies")
    _git(repo, "checkout", "-q", "-b", "feature")
    files = edited(SCENARIOS["group added to an allow rule"].edits)
    (policies / "entitlements.yaml").write_text(files["entitlements.yaml"])
    _git(repo, "commit", "-q", "-am", "platform may read production")

    said = SCENARIOS["group added to an allow rule"].says
    code, text, err = run("--base", "main", policies)
    assert (code, err) == (0, "")
    assert said in text
    assert "Compared main:policies (" in text
    assert f"with {policies} (working tree)." in text

    (policies / "deny.yaml").write_text("version: 1\ndeny: []\n")  # uncommitted
    code, text, _ = run(policies)  # default base: the merge base of HEAD and main
    assert code == 3  # contractors may now reach prod-admin
    assert "merge base of HEAD and main" in text
    assert said in text
    assert "kind contractor no longer denied prod-*" in text

    code, text, _ = run("--base", "main", "--head", "HEAD", policies)
    assert code == 0
    assert said in text
    assert "deny rule" not in text  # --head reads the commit, not the files on disk

    (policies / "entitlements.yaml").write_text("version: 1\nentitlements: [{id: x}]\n")
    _git(repo, "commit", "-q", "-am", "broken")
    code, out, err = run("--base", "main", "--head", "HEAD", policies)
    assert (code, out) == (1, "")
    assert "HEAD:policies/entitlements.yaml:2: entitlements[0]: missing required field" in err
    assert "HEAD:policies: " in err

    code, _, err = run("--base", "no-such-branch", policies)
    assert code == 1
    assert "unknown git revision 'no-such-branch'" in err
    code, _, err = run("--base=--output=/tmp/x", policies)
    assert code == 1
    assert "'--output=/tmp/x' is not a git revision" in err


GROUPS = ["a", "b", "c", "d"]
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _random_match(rng: random.Random) -> dict[str, object]:
    return rng.choice(
        [
            {"groups": rng.sample(GROUPS, rng.randint(1, 2))},
            {"groups": rng.sample(GROUPS, 1), "kinds": ["staff"]},
            {"kinds": [rng.choice(["staff", "contractor"])]},
            {"emails": ["p1*@example.com"]},
            {"claims": {"dept": "eng"}},
            {"everyone": True},
        ]
    )


def _random_entitlement(rng: random.Random, ent_id: str) -> dict[str, object]:
    ent: dict[str, object] = {
        "id": ent_id,
        "role_arn": f"arn:aws:iam::111122223333:role/{ent_id}",
        "allow": _random_match(rng),
        "require_mfa": rng.random() < 0.5,
    }
    if rng.random() < 0.3:
        ent["network"] = rng.choice(
            [{"source_ip": ["10.0.0.0/8"]}, {"source_vpc": ["vpc-0a1b2c3d"]}]
        )
    if rng.random() < 0.3:
        ent["approval"] = {"approvers": {"groups": rng.sample(GROUPS, 1)}}
    return ent


def _random_policy(rng: random.Random) -> dict[str, Any]:
    return {
        "version": 1,
        "people": [
            {"match": {"emails": ["*@contractor.example"]}, "kind": "contractor"},
            {"match": {"email": "p3@example.com"}, "valid_until": "2030-01-01"},
        ],
        "entitlements": [
            _random_entitlement(rng, f"{rng.choice(['prod', 'dev'])}-{n}") for n in range(10)
        ],
        "deny": [
            {"match": _random_match(rng), "entitlements": [rng.choice(["prod-*", "dev-1", "*"])]}
            for _ in range(rng.randint(0, 2))
        ],
        "auditors": {"groups": ["d"]},
    }


def _mutate(rng: random.Random, document: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(document)
    ents = new["entitlements"]
    for _ in range(rng.randint(1, 4)):
        what = rng.randrange(9)
        ent = rng.choice(ents)
        if what == 0:
            ent["allow"] = _random_match(rng)
        elif what == 1:
            ents.append(_random_entitlement(rng, f"new-{len(ents)}"))
        elif what == 2 and len(ents) > 1:
            ents.remove(ent)
        elif what == 3:
            new["deny"].append({"match": _random_match(rng), "entitlements": ["prod-*"]})
        elif what == 4 and new["deny"]:
            new["deny"].pop(0)
        elif what == 5:
            new["people"][1]["valid_until"] = rng.choice(["2026-01-01", "2031-01-01"])
        elif what == 6:
            new["people"].append({"match": {"email": "p5@contractor.example"}, "kind": "staff"})
        elif what == 7:
            ent["approval"] = {"approvers": {"groups": rng.sample(GROUPS, 2)}}
        else:
            new["auditors"] = {"groups": ["a"]}
    return new


def _random_people(rng: random.Random) -> list[DirectoryPerson]:
    return [
        DirectoryPerson(
            email=f"p{n}@{'contractor.example' if n % 5 == 0 else 'example.com'}",
            groups=frozenset(rng.sample(GROUPS, rng.randint(0, 3))),
            claims={"dept": rng.choice(["eng", "ops"])},
        )
        for n in range(30)
    ]


def _brute_force(
    evaluator: Evaluator, people: list[DirectoryPerson]
) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Every entitlement decided for every person, from a network it accepts; and approvers
    (of each entitlement, and of the audit trail as "(auditors)")."""
    allowed: dict[str, set[str]] = {}
    approvers: dict[str, set[str]] = {}
    for person in people:
        identity = Identity(
            "directory", person.email, person.email, person.groups, person.claims, ("mfa",)
        )
        resolved = evaluator.resolve(identity)
        for ent in evaluator.policy.entitlements:
            network = ent.network
            ctx = RequestContext(
                now=NOW,
                source_ip="10.0.0.1" if network and network.source_ip else None,
                source_vpc="vpc-0a1b2c3d" if network and network.source_vpc else None,
            )
            if evaluator.decide(resolved, ent.id, ctx).allowed:
                allowed.setdefault(ent.id, set()).add(person.email)
            if evaluator.can_approve(resolved, ent.id, NOW):
                approvers.setdefault(ent.id, set()).add(person.email)
        if evaluator.is_auditor(resolved, NOW):
            approvers.setdefault("(auditors)", set()).add(person.email)
    return allowed, approvers


def _moves(
    before: dict[str, set[str]], after: dict[str, set[str]]
) -> dict[str, tuple[list[str], list[str]]]:
    moves = {
        key: (
            sorted(after.get(key, set()) - before.get(key, set())),
            sorted(before.get(key, set()) - after.get(key, set())),
        )
        for key in {*before, *after}
    }
    return {k: v for k, v in moves.items() if v != ([], [])}


@pytest.mark.parametrize("seed", range(40))
def test_gains_and_losses_match_deciding_everything_for_everyone(seed: int) -> None:
    """The diff decides only what changed; deciding everything must give the same answer."""
    rng = random.Random(seed)
    document = _random_policy(rng)
    old = Evaluator(PolicySet.from_document(document))
    new = Evaluator(PolicySet.from_document(_mutate(rng, document)))
    people = _random_people(rng)
    result = diff_policies(old, new, people=people, now=NOW)
    (before, approved), (after, approves) = _brute_force(old, people), _brute_force(new, people)
    ents = result.entitlements
    assert {e.id: (list(e.gained), list(e.lost)) for e in ents if e.gained or e.lost} == _moves(
        before, after
    )
    found = {
        e.id: (list(e.approvers_gained), list(e.approvers_lost))
        for e in ents
        if e.approvers_gained or e.approvers_lost
    }
    found.update(
        ("(auditors)", (list(r.gained), list(r.lost)))
        for r in result.rules
        if r.section == "auditors" and (r.gained or r.lost)
    )
    assert found == _moves(approved, approves)
