"""moto's IAM, plus the SimulatePrincipalPolicy call moto lacks, answered by a real evaluator.

moto answers ``SimulatePrincipalPolicy`` with an error, so `broker doctor` could only say "not
verified" against it. :class:`SimulatingIam` passes every other call to a moto client and
answers the simulation with ``@cloud-copilot/iam-simulate`` (see iamsim.py) over the
principal's inline and attached policies as moto stores them: the same documents AWS would
evaluate. Permission boundaries and SCPs are not modelled.
"""

from __future__ import annotations

from typing import Any

from iamsim import simulate

DECISIONS = {
    "Allowed": "allowed",
    "ImplicitlyDenied": "implicitDeny",
    "ExplicitlyDenied": "explicitDeny",
}


class SimulatingIam:
    """A boto3 IAM client against moto whose ``simulate_principal_policy`` works."""

    def __init__(self, iam: Any) -> None:
        self._iam = iam
        self.simulations: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._iam, name)

    def simulate_principal_policy(
        self, *, PolicySourceArn: str, ActionNames: list[str], ResourceArns: list[str], **_: Any
    ) -> dict[str, Any]:
        """EvaluationResults for every action on every resource, as IAM shapes them."""
        self.simulations.append(
            {"principal": PolicySourceArn, "actions": ActionNames, "resources": ResourceArns}
        )
        requests = [{"action": a, "resource": r} for a in ActionNames for r in ResourceArns]
        results = simulate(self._policies(PolicySourceArn), None, requests, PolicySourceArn)
        return {
            "EvaluationResults": [
                {
                    "EvalActionName": request["action"],
                    "EvalResourceName": request["resource"],
                    "EvalDecision": DECISIONS[result],
                }
                for request, result in zip(requests, results, strict=True)
            ],
            "IsTruncated": False,
        }

    def _policies(self, arn: str) -> list[dict[str, Any]]:
        kind = arn.split(":", 5)[5].split("/", 1)[0]
        name = arn.rsplit("/", 1)[-1]
        if kind == "user":
            inline = self._iam.list_user_policies(UserName=name)["PolicyNames"]
            docs = [
                self._iam.get_user_policy(UserName=name, PolicyName=p)["PolicyDocument"]
                for p in inline
            ]
            attached = self._iam.list_attached_user_policies(UserName=name)["AttachedPolicies"]
        elif kind == "role":
            inline = self._iam.list_role_policies(RoleName=name)["PolicyNames"]
            docs = [
                self._iam.get_role_policy(RoleName=name, PolicyName=p)["PolicyDocument"]
                for p in inline
            ]
            attached = self._iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
        else:
            raise ValueError(f"cannot simulate {arn}: not an IAM user or role")
        for policy in attached:
            version = self._iam.get_policy(PolicyArn=policy["PolicyArn"])["Policy"]
            docs.append(
                self._iam.get_policy_version(
                    PolicyArn=policy["PolicyArn"], VersionId=version["DefaultVersionId"]
                )["PolicyVersion"]["Document"]
            )
        return [dict(d) for d in docs]
