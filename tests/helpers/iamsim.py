"""What issued credentials may actually do: IAM evaluation by ``@cloud-copilot/iam-simulate``.

moto does not enforce session policies, conditions or expiry, so tests ask this simulator
(npm, AGPL, test-time only) instead. Needs ``npm ci`` in tests/node.

    simulate(
        identity_policies=[role_policy_doc],
        session_policy=session_policy_doc,          # or None
        requests=[{"action": "s3:GetObject", "resource": "arn:aws:s3:::b/k",
                   "context": {"aws:SourceIp": "203.0.113.7"}}],
        principal="arn:aws:sts::111122223333:assumed-role/role/session",
    ) == ["Allowed"]

Results are "Allowed", "ImplicitlyDenied" or "ExplicitlyDenied". The library evaluates the session
policy natively: allowed only when an identity policy AND the session policy allow, and an
explicit Deny in any of them wins. Invalid input (malformed policy, unknown action, a resource
of the wrong type, a context value of the wrong type) raises ``IamSimError``; it never reads as a
denial.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
SCRIPT = NODE_DIR / "iamsim.mjs"

RESULTS = ("Allowed", "ImplicitlyDenied", "ExplicitlyDenied")


class IamSimError(RuntimeError):
    """The simulator rejected its input or failed."""


def require_node_modules() -> None:
    if shutil.which("node") is None:
        raise IamSimError("node is not on PATH; the IAM simulator needs Node.js >= 20")
    if not (NODE_DIR / "node_modules" / "@cloud-copilot" / "iam-simulate").is_dir():
        raise IamSimError(f"node modules missing: run `npm ci` in {NODE_DIR}")


def simulate_raw(
    identity_policies: list[dict[str, Any]],
    session_policy: dict[str, Any] | None,
    requests: list[dict[str, Any]],
    principal: str,
    *,
    resource_account: str | None = None,
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """Like :func:`simulate` but returns the full result objects: ``action``, ``resource``,
    ``result``, ``ignoredContextKeys`` (context keys the library dropped as not applicable to
    the action) and ``raw`` (the library's response with per-statement explanations)."""
    require_node_modules()
    payload: dict[str, Any] = {
        "identityPolicies": identity_policies,
        "sessionPolicy": session_policy,
        "requests": requests,
        "principal": principal,
    }
    if resource_account is not None:
        payload["resourceAccount"] = resource_account
    proc = subprocess.run(
        ["node", str(SCRIPT)],
        cwd=NODE_DIR,
        input=json.dumps(payload).encode(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    out = proc.stdout.decode(errors="replace").strip()
    try:
        data: dict[str, Any] = json.loads(out.splitlines()[-1]) if out else {}
    except ValueError:
        data = {}
    if proc.returncode != 0 or "results" not in data:
        detail = json.dumps(data, indent=2) if data else out
        raise IamSimError(
            f"iamsim.mjs failed (exit {proc.returncode}): {detail}\n"
            f"{proc.stderr.decode(errors='replace')}"
        )
    results: list[dict[str, Any]] = data["results"]
    return results


def simulate(
    identity_policies: list[dict[str, Any]],
    session_policy: dict[str, Any] | None,
    requests: list[dict[str, Any]],
    principal: str,
    *,
    resource_account: str | None = None,
) -> list[str]:
    """Evaluate each request (``{"action", "resource", "context"}``) made by ``principal`` (an
    assumed-role session ARN) holding the role's ``identity_policies`` and ``session_policy``.
    Returns one of "Allowed" / "ImplicitlyDenied" / "ExplicitlyDenied" per request, in order.
    ``resource_account`` defaults to the principal's account (S3 ARNs carry none)."""
    return [
        str(r["result"])
        for r in simulate_raw(
            identity_policies,
            session_policy,
            requests,
            principal,
            resource_account=resource_account,
        )
    ]
