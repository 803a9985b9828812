"""Credentials as environment variables: for `exec`'s child, and as exports for a shell.

One list of variables serves both, so a shell that evaluates `broker creds --export` and a
program started by `broker exec` see the same thing: the credentials, their expiry, the region
(`AWS_REGION` for the SDKs, `AWS_DEFAULT_REGION` for the AWS CLI v1 and older tools), and no
profile that could take over from them.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping

from broker.cli.client.cache import AwsCredentials, rfc3339

# Other credential sources that would win over, or mix with, the variables set here.
SHADOWING = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SECURITY_TOKEN", "AWS_CREDENTIAL_FILE")
# Set by Flask's command line in its own process; never meant for the programs we start.
NOT_INHERITED = ("FLASK_RUN_FROM_CLI",)
SHELLS = ("sh", "fish", "powershell")


def credential_variables(credentials: AwsCredentials, region: str | None) -> dict[str, str]:
    """The variables that hand these credentials (and the region, when known) to AWS tools."""
    variables = {
        "AWS_ACCESS_KEY_ID": credentials.access_key_id,
        "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
        "AWS_SESSION_TOKEN": credentials.session_token,
        "AWS_CREDENTIAL_EXPIRATION": rfc3339(credentials.expiration),
    }
    if region:
        variables.update(AWS_REGION=region, AWS_DEFAULT_REGION=region)
    return variables


def child_environment(
    credentials: AwsCredentials, region: str | None, base: Mapping[str, str]
) -> dict[str, str]:
    """`base` with these credentials in it and every competing credential source taken out.

    Without a region, whatever region `base` had stays.
    """
    env = {k: v for k, v in base.items() if k not in SHADOWING and k not in NOT_INHERITED}
    env.update(credential_variables(credentials, region))
    return env


def default_shell(environ: Mapping[str, str] = os.environ) -> str:
    """The export syntax the current shell most likely wants: fish, powershell, else sh."""
    if sys.platform == "win32" or ("PSModulePath" in environ and "SHELL" not in environ):
        return "powershell"
    name = os.path.basename(environ.get("SHELL", ""))
    return "fish" if name == "fish" else "sh"


def exports(variables: Mapping[str, str], shell: str) -> str:
    """Lines that set `variables` (and clear the shadowing ones) in `shell` (see SHELLS)."""
    if shell == "fish":
        lines = [f"set -e {name}" for name in SHADOWING]
        lines += [f"set -gx {k} {_fish_quote(v)}" for k, v in variables.items()]
    elif shell == "powershell":
        lines = [f"Remove-Item Env:{name} -ErrorAction SilentlyContinue" for name in SHADOWING]
        lines += [f"$Env:{k} = '{v.replace(chr(39), chr(39) * 2)}'" for k, v in variables.items()]
    else:
        lines = [f"unset {' '.join(SHADOWING)}"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in variables.items()]
    return "\n".join(lines) + "\n"


def _fish_quote(value: str) -> str:
    """Fish single quotes: only backslash and the quote itself are escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
