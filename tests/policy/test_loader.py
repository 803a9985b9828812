from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.policy import PolicyLoadError, load_policy_dir, load_policy_files, read_policy_files

WritePolicy = Callable[..., Path]

GOOD_ENTITLEMENT = """\
version: 1
entitlements:
  - id: dev-readonly
    role_arn: arn:aws:iam::111122223333:role/dev-readonly
    allow: {groups: [developers]}
"""


def load_errors(directory: Path) -> list[str]:
    with pytest.raises(PolicyLoadError) as caught:
        load_policy_dir(directory)
    return [str(issue) for issue in caught.value.errors]


def test_example_policies_load_cleanly(example_policies: Path) -> None:
    loaded = load_policy_dir(example_policies)
    ids = {e.id for e in loaded.policy.entitlements}
    assert {"dev-readonly", "prod-readonly", "prod-admin", "contractor-sandbox"} <= ids
    assert loaded.warnings == []
    assert len(loaded.version_hash) == 64
    assert loaded.evaluator.entitlement("prod-admin") is not None


def test_version_hash_is_stable_and_changes_with_content(write_policy: WritePolicy) -> None:
    directory = write_policy(**{"a.yaml": GOOD_ENTITLEMENT})
    first = load_policy_dir(directory).version_hash
    assert load_policy_dir(directory).version_hash == first
    (directory / "a.yaml").write_text((directory / "a.yaml").read_text() + "# changed\n")
    assert load_policy_dir(directory).version_hash != first


def test_files_are_merged_and_subdirectories_ignored(write_policy: WritePolicy) -> None:
    directory = write_policy(
        **{
            "a.yaml": GOOD_ENTITLEMENT,
            "b.yml": """\
                version: 1
                deny:
                  - match: {groups: [interns]}
                    entitlements: ["dev-*"]
                """,
            "tests__cases.yaml": "- not: a policy\n",
        }
    )
    loaded = load_policy_dir(directory)
    assert [e.id for e in loaded.policy.entitlements] == ["dev-readonly"]
    assert len(loaded.policy.deny) == 1
    assert loaded.policy.origins["entitlement:dev-readonly"] == "a.yaml:3"
    assert loaded.policy.origins["deny:0"] == "b.yml:3"


def test_bad_yaml_reports_the_yaml_error_line(write_policy: WritePolicy) -> None:
    directory = write_policy(
        **{
            "bad.yaml": """\
                version: 1
                entitlements:
                  - id: x
                     role_arn: misindented
                """
        }
    )
    errors = load_errors(directory)
    assert len(errors) == 1
    assert errors[0].startswith(f"{directory / 'bad.yaml'}:4: invalid YAML:")


def test_unknown_field_is_reported_at_its_line(write_policy: WritePolicy) -> None:
    directory = write_policy(
        **{
            "e.yaml": """\
                version: 1
                entitlements:
                  - id: dev-readonly
                    role_arn: arn:aws:iam::111122223333:role/dev-readonly
                    allow: {groups: [developers]}
                    requires_mfa: true
                """
        }
    )
    assert load_errors(directory) == [
        f"{directory / 'e.yaml'}:6: unknown field 'requires_mfa' in entitlements[0]; check the "
        "spelling (`broker policy schema` lists every field)"
    ]


def test_duplicate_entitlement_id_names_both_places(write_policy: WritePolicy) -> None:
    directory = write_policy(
        **{"a.yaml": GOOD_ENTITLEMENT, "b.yaml": "# a copy\n" + GOOD_ENTITLEMENT}
    )
    errors = load_errors(directory)
    assert errors == [
        f"{directory / 'b.yaml'}:4: duplicate entitlement id 'dev-readonly': also defined at "
        f"{directory / 'a.yaml'}:3; ids must be unique across all policy files"
    ]


@pytest.mark.parametrize(
    ("duration", "expected"),
    [("13h", "13h is longer than the 12h maximum"), ("5m", "5m is shorter than the 15m minimum")],
)
def test_out_of_range_durations_are_refused(
    write_policy: WritePolicy, duration: str, expected: str
) -> None:
    directory = write_policy(**{"d.yaml": GOOD_ENTITLEMENT + f"    max_duration: {duration}\n"})
    errors = load_errors(directory)
    assert len(errors) == 1
    assert errors[0].startswith(
        f"{directory / 'd.yaml'}:6: entitlements[0].max_duration: {expected}"
    )


def test_unparseable_duration_says_how_to_write_one(write_policy: WritePolicy) -> None:
    directory = write_policy(**{"d.yaml": GOOD_ENTITLEMENT + "    max_grant: an hour\n"})
    (error,) = load_errors(directory)
    assert "d.yaml:6: entitlements[0].max_grant: 'an hour' is not a duration; write" in error


def test_oversized_session_policy_is_refused_with_its_size(write_policy: WritePolicy) -> None:
    resources = json.dumps([f"arn:aws:s3:::bucket-number-{n:04d}/*" for n in range(70)])
    directory = write_policy(
        **{
            "s.yaml": GOOD_ENTITLEMENT
            + "    session_policy:\n"
            + '      Version: "2012-10-17"\n'
            + "      Statement:\n"
            + "        - Effect: Allow\n"
            + "          Action: s3:GetObject\n"
            + f"          Resource: {resources}\n"
        }
    )
    (error,) = load_errors(directory)
    assert error.startswith(f"{directory / 's.yaml'}:6: entitlements[0].session_policy: ")
    assert "characters as compact JSON; STS refuses more than 2048" in error


def test_invalid_role_arn_is_reported_at_its_line(write_policy: WritePolicy) -> None:
    directory = write_policy(
        **{"r.yaml": GOOD_ENTITLEMENT.replace("111122223333:role", "1111:role")}
    )
    assert load_errors(directory) == [
        f"{directory / 'r.yaml'}:4: entitlements[0].role_arn: "
        "'arn:aws:iam::1111:role/dev-readonly' is not a valid IAM role ARN; expected e.g. "
        "arn:aws:iam::111122223333:role/name"
    ]


def test_malformed_iam_statement_points_at_the_bad_key(write_policy: WritePolicy) -> None:
    directory = write_policy(
        **{
            "m.yaml": GOOD_ENTITLEMENT
            + "    session_policy:\n"  # line 6
            + '      Version: "2012-10-17"\n'
            + "      Statement:\n"
            + "        - Effect: Permit\n"  # line 9
            + "          Action: s3:GetObject\n"
            + "          Resource: '*'\n"
        }
    )
    assert load_errors(directory) == [
        f"{directory / 'm.yaml'}:9: entitlements[0].session_policy.Statement[0].Effect: "
        "must be Allow or Deny, not 'Permit'"
    ]


def test_unknown_person_kind_is_reported_at_its_line(write_policy: WritePolicy) -> None:
    directory = write_policy(
        **{
            "a.yaml": GOOD_ENTITLEMENT,
            "people.yaml": """\
                version: 1
                people:
                  - match: {emails: ["*@vendor.example"]}
                    kind: vendor
                """,
        }
    )
    assert load_errors(directory) == [
        f"{directory / 'people.yaml'}:4: people[0].kind: Input should be 'staff' or "
        "'contractor' (got 'vendor')"
    ]


def test_empty_allow_match_fails_closed(write_policy: WritePolicy) -> None:
    directory = write_policy(**{"a.yaml": GOOD_ENTITLEMENT.replace("{groups: [developers]}", "{}")})
    (error,) = load_errors(directory)
    assert error.startswith(f"{directory / 'a.yaml'}:5: entitlements[0].allow: empty match")


def test_duplicate_yaml_key_is_an_error(write_policy: WritePolicy) -> None:
    directory = write_policy(**{"a.yaml": GOOD_ENTITLEMENT + "    allow: {everyone: true}\n"})
    (error,) = load_errors(directory)
    assert error.startswith(f"{directory / 'a.yaml'}:6: duplicate key 'allow' (first at line 5)")


def test_every_error_in_every_file_is_reported_at_once(write_policy: WritePolicy) -> None:
    directory = write_policy(
        **{
            "a.yaml": GOOD_ENTITLEMENT + "    max_duration: 13h\n    require_mfa: maybe\n",
            "b.yaml": "version: 1\nentitlements: [\n",
        }
    )
    with pytest.raises(PolicyLoadError) as caught:
        load_policy_dir(directory)
    lines = str(caught.value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        f"{directory / 'a.yaml'}:6",
        f"{directory / 'a.yaml'}:7",
        f"{directory / 'b.yaml'}:3",
    ]


def test_empty_directory_fails_closed(tmp_path: Path) -> None:
    assert load_errors(tmp_path) == [
        f"{tmp_path}: no policy files (*.yaml, *.yml) found; refusing to run without a policy "
        "(fail closed)"
    ]


def test_missing_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert load_errors(missing) == [
        f"{missing}: policy directory does not exist; pass the right path"
    ]


def test_policy_without_entitlements_fails_closed(write_policy: WritePolicy) -> None:
    directory = write_policy(**{"p.yaml": "version: 1\nadmins: {groups: [security-admins]}\n"})
    (error,) = load_errors(directory)
    assert "no entitlements defined in any policy file" in error


def test_empty_file_is_an_error(write_policy: WritePolicy) -> None:
    directory = write_policy(**{"a.yaml": GOOD_ENTITLEMENT, "empty.yaml": "# nothing yet\n"})
    assert load_errors(directory) == [
        f"{directory / 'empty.yaml'}:1: file is empty; a policy file is a mapping with version: 1"
    ]


def test_deny_glob_matching_nothing_is_a_warning(write_policy: WritePolicy) -> None:
    directory = write_policy(
        **{
            "a.yaml": GOOD_ENTITLEMENT,
            "deny.yaml": """\
                version: 1
                deny:
                  - match: {kinds: [contractor]}
                    entitlements: ["dev-*", "prod-*"]
                """,
        }
    )
    loaded = load_policy_dir(directory)
    assert [str(w) for w in loaded.warnings] == [
        f"{directory / 'deny.yaml'}:4: warning: deny pattern 'prod-*' matches no entitlement; "
        "check the id (it will apply to any entitlement added later with a matching id)"
    ]


def test_escalating_session_policy_loads_with_a_warning(write_policy: WritePolicy) -> None:
    directory = write_policy(
        **{
            "a.yaml": GOOD_ENTITLEMENT
            + "    session_policy:\n"
            + '      Version: "2012-10-17"\n'
            + "      Statement: [{Effect: Allow, Action: 'iam:*', Resource: '*'}]\n"
        }
    )
    warnings = load_policy_dir(directory).warnings
    assert {(w.severity, w.line) for w in warnings} == {("warning", 8)}
    assert any("'iam:*' lets the session change IAM" in w.message for w in warnings)


def test_valid_until_date_lasts_to_the_end_of_that_day(write_policy: WritePolicy) -> None:
    directory = write_policy(
        **{
            "a.yaml": GOOD_ENTITLEMENT,
            "people.yaml": """\
                version: 1
                people:
                  - match: {email: dana@contractor.example}
                    valid_until: 2026-12-31
                """,
        }
    )
    (rule,) = load_policy_dir(directory).policy.people
    assert rule.valid_until == datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)


def test_loading_validates_exactly_the_bytes_read_and_hashed(write_policy: WritePolicy) -> None:
    """A reloading process hashes what it read, then validates that, not the file as it is now."""
    directory = write_policy(**{"a.yaml": GOOD_ENTITLEMENT})
    version = load_policy_dir(directory).version_hash
    files = read_policy_files(directory)
    (directory / "a.yaml").write_text("version: 1\nentitlements: [\n")  # broken after the read
    loaded = load_policy_files(files)
    assert loaded.version_hash == files.version == version
    assert [e.id for e in loaded.policy.entitlements] == ["dev-readonly"]
    with pytest.raises(PolicyLoadError):
        load_policy_dir(directory)
