"""Reading policy files stays cheap and every problem names its file and line, never a traceback.

Each case goes through the loader and through `broker policy check`, the command operators run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from broker import create_app
from broker.cli.policy import policy
from broker.errors import ConfigError
from broker.policy import PolicyLoadError, load_policy_dir
from broker.policy.loader import MAX_ENTITLEMENTS, MAX_FILE_BYTES
from broker.policy.yamlsource import MAX_DEPTH

WritePolicy = Callable[..., Path]

ENTITLEMENT = """\
version: 1
entitlements:
  - id: dev-readonly
    role_arn: arn:aws:iam::111122223333:role/dev-readonly
    allow: {groups: [developers]}
"""

# Nine levels of nine aliases each: 9**9 (387 million) strings once expanded. It took
# `broker policy check` 3.5 minutes and 19.5 GB before aliases were refused.
BILLION_LAUGHS = (
    'version: 1\na: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{name}: &{name} [{','.join([f'*{previous}'] * 9)}]\n"
        for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
    )
)

MEASURE = """\
import json, resource, sys, time, tracemalloc
from broker.policy import PolicyLoadError, load_policy_dir
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
start = time.perf_counter()
try:
    load_policy_dir(sys.argv[1])
    errors = []
except PolicyLoadError as exc:
    errors = [str(issue) for issue in exc.errors]
seconds = time.perf_counter() - start
peak = tracemalloc.get_traced_memory()[1]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "traced_peak": peak,
                  "rss_growth": (after - before) * 1024, "errors": errors}))
"""


def check(directory: Path) -> tuple[int, str, BaseException | None]:
    """Run `broker policy check DIRECTORY`; return (exit code, stderr, unexpected exception)."""
    result = CliRunner().invoke(policy, ["check", str(directory)])
    unexpected = None if isinstance(result.exception, SystemExit) else result.exception
    return result.exit_code, result.stderr, unexpected


def refused(directory: Path) -> list[str]:
    """The errors the loader and `broker policy check` both report, checked to be the same."""
    with pytest.raises(PolicyLoadError) as caught:
        load_policy_dir(directory)
    errors = [str(issue) for issue in caught.value.errors]
    code, err, unexpected = check(directory)
    assert (code, unexpected) == (1, None)
    assert "Traceback" not in err
    for error in errors:
        assert error in err
    return errors


def test_alias_bomb_is_refused_at_once_with_little_memory(
    write_policy: WritePolicy, tmp_path: Path
) -> None:
    assert len(BILLION_LAUGHS) < 400
    directory = write_policy(**{"a.yaml": ENTITLEMENT, "laughs.yaml": BILLION_LAUGHS})
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, str(script), str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    figures = json.loads(done.stdout)
    assert figures["errors"] == [
        f"{directory / 'laughs.yaml'}:2: &a: YAML anchors and aliases are not allowed in policy "
        "files (a few aliases can expand to gigabytes, and a rule should read in full where it "
        "is written); write the value out in full"
    ]
    assert figures["seconds"] < 1.0, figures
    assert figures["traced_peak"] < 50 * 2**20, figures
    assert figures["rss_growth"] < 50 * 2**20, figures
    code, err, unexpected = check(directory)
    assert (code, unexpected) == (1, None)
    assert f"{directory / 'laughs.yaml'}:2: &a: YAML anchors and aliases" in err


def test_a_single_alias_is_refused_at_the_alias(write_policy: WritePolicy) -> None:
    directory = write_policy(
        **{
            "a.yaml": ENTITLEMENT,
            "b.yaml": """\
                version: 1
                admins: {groups: [security]}
                auditors: *admins
                """,
        }
    )
    (error,) = refused(directory)
    # The anchor is undefined, so YAML itself refuses the alias, at its line.
    assert error.startswith(f"{directory / 'b.yaml'}:3: ")
    assert "alias" in error


def test_a_reused_anchor_is_refused_at_the_anchor(write_policy: WritePolicy) -> None:
    directory = write_policy(
        **{
            "a.yaml": ENTITLEMENT,
            "b.yaml": """\
                version: 1
                admins: &security {groups: [security]}
                auditors: *security
                """,
        }
    )
    (error,) = refused(directory)
    assert error.startswith(f"{directory / 'b.yaml'}:2: &security: YAML anchors and aliases")


def test_text_with_an_ampersand_is_still_text(write_policy: WritePolicy) -> None:
    directory = write_policy(**{"a.yaml": ENTITLEMENT + "    description: R&D sandbox, 'a & b'\n"})
    (entitlement,) = load_policy_dir(directory).policy.entitlements
    assert entitlement.description == "R&D sandbox, 'a & b'"


def test_impossible_date_is_an_error_at_its_line(write_policy: WritePolicy) -> None:
    directory = write_policy(
        **{
            "a.yaml": ENTITLEMENT,
            "people.yaml": """\
                version: 1
                people:
                  - match: {email: dana@contractor.example}
                    valid_until: 2026-13-45
                """,
        }
    )
    assert refused(directory) == [
        f"{directory / 'people.yaml'}:4: '2026-13-45' is not a real date or time (month must be "
        "in 1..12); write e.g. 2026-12-31 or 2026-12-31T18:00:00Z"
    ]


def test_impossible_quoted_date_is_an_error_at_its_line(write_policy: WritePolicy) -> None:
    directory = write_policy(
        **{
            "a.yaml": ENTITLEMENT,
            "people.yaml": """\
                version: 1
                people:
                  - match: {email: dana@contractor.example}
                    valid_until: "2026-02-30"
                """,
        }
    )
    (error,) = refused(directory)
    assert error.startswith(f"{directory / 'people.yaml'}:4: people[0].valid_until: '2026-02-30'")


def test_huge_integer_is_an_error_at_its_line(write_policy: WritePolicy) -> None:
    directory = write_policy(**{"a.yaml": ENTITLEMENT + "    max_duration: " + "9" * 5000 + "\n"})
    (error,) = refused(directory)
    assert error.startswith(f"{directory / 'a.yaml'}:6: '9999999999")
    assert "cannot be read as int (Exceeds the limit (4300 digits)" in error
    assert len(error) < 400


def test_bytes_that_are_not_utf8_are_an_error_at_their_line(write_policy: WritePolicy) -> None:
    directory = write_policy(**{"a.yaml": ENTITLEMENT})
    (directory / "b.yaml").write_bytes(
        b"version: 1\n# caf\xe9 (Latin-1)\nadmins: {everyone: true}\n"
    )
    assert refused(directory) == [
        f"{directory / 'b.yaml'}:2: not UTF-8 text (byte 0xe9 invalid continuation byte); save "
        "as UTF-8"
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b"version: 1\n\nadmins: {groups: [a\x00b]}\n",
            "3: NUL byte: not allowed in YAML; the file is not plain text (saved as UTF-16, or "
            "binary?): save it as UTF-8 text",
        ),
        (
            b"version: 1\nadmins: {groups: [a\x07b]}\n",
            "2: character 0x0007 is not allowed in YAML (control characters are not allowed); "
            "remove it",
        ),
    ],
)
def test_control_characters_are_an_error_at_their_line(
    write_policy: WritePolicy, raw: bytes, expected: str
) -> None:
    directory = write_policy(**{"a.yaml": ENTITLEMENT})
    (directory / "b.yaml").write_bytes(raw)
    assert refused(directory) == [f"{directory / 'b.yaml'}:{expected}"]


def test_deep_nesting_is_an_error_at_its_line(write_policy: WritePolicy) -> None:
    deep = "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5)
    directory = write_policy(**{"a.yaml": ENTITLEMENT, "b.yaml": f"version: 1\n\nx: {deep}\n"})
    assert refused(directory) == [
        f"{directory / 'b.yaml'}:3: nested more than {MAX_DEPTH} levels deep; no policy needs "
        "that many, so check the indentation and brackets"
    ]


def test_very_deep_nesting_is_refused_by_yaml_itself(write_policy: WritePolicy) -> None:
    deep = "[" * 5000 + "]" * 5000
    directory = write_policy(**{"a.yaml": ENTITLEMENT, "b.yaml": f"version: 1\n\nx: {deep}\n"})
    (error,) = refused(directory)
    assert error.startswith(f"{directory / 'b.yaml'}:3: invalid YAML: ")
    assert "exceeded maximum nesting depth" in error


def test_oversized_file_is_refused_without_reading_it_all(write_policy: WritePolicy) -> None:
    filler = "# padding\n" * (MAX_FILE_BYTES // 10 + 1)
    directory = write_policy(**{"a.yaml": ENTITLEMENT + filler})
    assert refused(directory) == [
        f"{directory / 'a.yaml'}: file is larger than 1 MiB; split it into several policy "
        "files (every *.yaml file in the directory is read)"
    ]


def test_too_many_entitlements_are_refused_at_the_first_one_over(
    write_policy: WritePolicy,
) -> None:
    half = MAX_ENTITLEMENTS // 2

    def entitlements(first: int, count: int) -> str:
        role = "arn:aws:iam::111122223333:role/r"
        return "version: 1\nentitlements:\n" + "".join(
            f"- {{id: e{n}, role_arn: '{role}', allow: {{everyone: true}}}}\n"
            for n in range(first, first + count)
        )

    directory = write_policy(
        **{"a.yaml": entitlements(0, half), "b.yaml": entitlements(half, half + 1)}
    )
    assert refused(directory) == [
        f"{directory / 'b.yaml'}:{half + 3}: more than {MAX_ENTITLEMENTS:,} entitlements in the "
        f"policy files (this is number {MAX_ENTITLEMENTS + 1:,}); not loaded, as a policy this "
        "big is more likely generated by mistake than written on purpose"
    ]


@pytest.mark.parametrize("section", ["people", "deny"])
def test_a_missing_section_is_an_error_naming_the_file_to_add(
    write_policy: WritePolicy, section: str
) -> None:
    directory = write_policy(**{"a.yaml": ENTITLEMENT})
    (directory / f"{section}.yaml").unlink()
    what = {"people": "people rules", "deny": "deny rules"}[section]
    assert refused(directory) == [
        f"{directory}: no policy file has a `{section}:` section, so {section}.yaml may have "
        f"been deleted or not copied; if there are no {what} on purpose, add {section}.yaml "
        f"holding `version: 1` and `{section}: []`"
    ]


def test_empty_sections_say_no_rules_on_purpose(write_policy: WritePolicy) -> None:
    directory = write_policy(**{"a.yaml": ENTITLEMENT})
    assert {p.name: p.read_text() for p in directory.glob("*.yaml")} == {
        "a.yaml": ENTITLEMENT,
        "people.yaml": "version: 1\npeople: []\n",
        "deny.yaml": "version: 1\ndeny: []\n",
    }
    loaded = load_policy_dir(directory)
    assert (loaded.policy.people, loaded.policy.deny, loaded.warnings) == ((), (), [])


def test_sections_may_live_in_any_file(write_policy: WritePolicy) -> None:
    directory = write_policy(**{"a.yaml": ENTITLEMENT + "people: []\ndeny: []\n"})
    (directory / "people.yaml").unlink()
    (directory / "deny.yaml").unlink()
    assert load_policy_dir(directory).policy.entitlements[0].id == "dev-readonly"


def test_a_missing_section_is_not_claimed_when_a_file_could_not_be_read(
    write_policy: WritePolicy,
) -> None:
    directory = write_policy(**{"a.yaml": ENTITLEMENT, "people.yaml": "version: 1\npeople: [\n"})
    (error,) = refused(directory)
    assert error.startswith(f"{directory / 'people.yaml'}:3: invalid YAML:")


def test_app_startup_reports_a_bad_date_with_file_and_line(
    write_policy: WritePolicy, db_url: str
) -> None:
    directory = write_policy(
        **{
            "a.yaml": ENTITLEMENT,
            "people.yaml": textwrap.dedent(
                """\
                version: 1
                people:
                  - match: {email: dana@contractor.example}
                    valid_until: 2026-13-45
                """
            ),
        }
    )
    config = {"ENV": "testing", "DATABASE_URL": db_url, "POLICY_DIR": str(directory)}
    with pytest.raises(ConfigError) as info:
        create_app(config)
    assert f"{directory / 'people.yaml'}:4: '2026-13-45' is not a real date" in str(info.value)
