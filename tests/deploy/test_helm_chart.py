"""The Helm chart, rendered and linted by Helm's own Go SDK, checked against Kubernetes' schemas.

`helm-python-sdk` (installed by scripts/setup --test) binds Helm v4's SDK: rendering and lint
are Helm's, not an imitation. `kubernetes-validate` checks each rendered object against the
API schema of a recent Kubernetes, strictly (an unknown or misspelled field is an error).
Not checked here: installing into a cluster (no cluster), so hook ordering, probes answering
and pods starting under the security context are exercised only by the image-layout tests.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.config import Settings

helm = pytest.importorskip("helm_python", reason="installed by scripts/setup --test")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="scripts/setup --test")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "broker"
KUBE_VERSION = "1.30.0"
POLICY_FILES = {p.name: p.read_text() for p in sorted((ROOT / "policies").glob("*.yaml"))}


def production_values(**overrides: Any) -> dict[str, Any]:
    """What an operator gives: the required settings, secrets and policy files."""
    values: dict[str, Any] = {
        "settings": {
            "BROKER_BASE_URL": "https://broker.example.com",
            "BROKER_OIDC_ISSUER": "https://idp.example.com",
            "BROKER_OIDC_CLIENT_ID": "broker",
            "BROKER_TRUSTED_PROXIES": "10.8.0.0/16",
        },
        "secrets": {
            "BROKER_SECRET_KEY": "k" * 48,
            "BROKER_DATABASE_URL": "postgresql+psycopg://broker:pw@db.internal:5432/broker",
            "BROKER_OIDC_CLIENT_SECRET": "client-secret",
        },
        "policies": {"files": POLICY_FILES},
    }
    for key, value in overrides.items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    return values


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart renders (NOTES.txt aside), as `helm template` would print them."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name="acme", namespace="security", is_install=True)
    return [
        doc
        for path, text in sorted(manifests.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def by_kind_name(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return render(production_values(scheduler={"metricsPort": 9102}))


@pytest.fixture(scope="module")
def named(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return by_kind_name(objects)


def pod_specs(named: dict[tuple[str, str], dict[str, Any]]) -> Iterator[tuple[str, Any]]:
    for name in ("acme-broker-web", "acme-broker-scheduler"):
        yield name, named[("Deployment", name)]["spec"]["template"]["spec"]
    yield "acme-broker-migrate", named[("Job", "acme-broker-migrate")]["spec"]["template"]["spec"]


def test_chart_metadata_and_values_are_yaml() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["type"]) == ("v2", "broker", "application")
    assert isinstance(yaml.safe_load((CHART / "values.yaml").read_text()), dict)


def test_helm_lint_finds_nothing_beyond_information() -> None:
    report = helm.lint(CHART, production_values(), strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert (problems, report["errors"]) == ([], [])


def test_every_object_is_valid_for_kubernetes(objects: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        ["ConfigMap"] * 4
        + ["Secret"] * 2
        + ["Deployment"] * 2
        + ["Job", "Service", "ServiceAccount", "PodDisruptionBudget"]
    )
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_the_schema_check_is_not_vacuous(named: dict[tuple[str, str], dict[str, Any]]) -> None:
    web = copy.deepcopy(named[("Deployment", "acme-broker-web")])
    container = web["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, KUBE_VERSION, strict=True)


def test_pods_run_non_root_on_a_read_only_root_with_writable_emptydirs(
    named: dict[tuple[str, str], dict[str, Any]],
) -> None:
    for name, spec in pod_specs(named):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == 10001, name
        assert spec["automountServiceAccountToken"] is False, name
        (container,) = spec["containers"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], name
        assert "emptyDir" in volumes[mounts["/var/lib/broker"]["name"]], name
        assert mounts["/etc/broker/policies"]["readOnly"] is True, name


def test_web_has_replicas_probes_and_a_service(
    named: dict[tuple[str, str], dict[str, Any]],
) -> None:
    web = named[("Deployment", "acme-broker-web")]
    assert web["spec"]["replicas"] == 2
    (container,) = web["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["web"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"WEB_CONCURRENCY": "2", "PORT": "8000"}
    service = named[("Service", "acme-broker")]
    assert service["spec"]["selector"] == web["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_scheduler_runs_separately_with_its_metrics_port(
    named: dict[tuple[str, str], dict[str, Any]],
) -> None:
    scheduler = named[("Deployment", "acme-broker-scheduler")]
    assert scheduler["spec"]["replicas"] == 2
    (container,) = scheduler["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["scheduler"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {
        "BROKER_SCHEDULER_METRICS_PORT": "9102",
        "BROKER_SCHEDULER_METRICS_ADDRESS": "0.0.0.0",
    }
    web_labels = named[("Deployment", "acme-broker-web")]["spec"]["selector"]["matchLabels"]
    assert scheduler["spec"]["selector"]["matchLabels"] != web_labels


def test_migrations_run_as_a_hook_on_copies_made_before_them(
    named: dict[tuple[str, str], dict[str, Any]],
) -> None:
    job = named[("Job", "acme-broker-migrate")]
    hook = job["metadata"]["annotations"]
    assert hook["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # On install the release's own ConfigMaps and Secret do not exist yet: the Job reads hooks.
    refs = [r.get("configMapRef", r.get("secretRef"))["name"] for r in container["envFrom"]]
    policies = next(v for v in job["spec"]["template"]["spec"]["volumes"] if "configMap" in v)
    for kind, name in [
        ("ConfigMap", refs[0]),
        ("Secret", refs[1]),
        ("ConfigMap", policies["configMap"]["name"]),
    ]:
        annotations = named[(kind, name)]["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == hook["helm.sh/hook"]
        assert int(annotations["helm.sh/hook-weight"]) < int(hook["helm.sh/hook-weight"])


def test_settings_secrets_and_policies_reach_the_pods(
    named: dict[tuple[str, str], dict[str, Any]],
) -> None:
    settings = named[("ConfigMap", "acme-broker-settings")]["data"]
    assert settings["BROKER_BASE_URL"] == "https://broker.example.com"
    assert settings["BROKER_POLICY_DIR"] == "/etc/broker/policies"
    assert "BROKER_SECRET_KEY" not in settings
    secret = named[("Secret", "acme-broker-secrets")]["data"]
    assert base64.b64decode(secret["BROKER_SECRET_KEY"]).decode() == "k" * 48
    # Policy files arrive byte for byte (the chart quotes them as JSON strings).
    assert named[("ConfigMap", "acme-broker-policies")]["data"] == POLICY_FILES
    # Every BROKER_* name the pods get is a broker setting: an unknown one stops startup.
    names = set(settings) | set(secret) | {"BROKER_SCHEDULER_METRICS_PORT"}
    assert {n.removeprefix("BROKER_") for n in names} <= set(Settings.model_fields)


def test_existing_secret_and_policy_configmap_replace_the_charts_own() -> None:
    values = production_values(existingSecret="broker-secrets", secrets={"BROKER_SECRET_KEY": ""})
    values["policies"] = {"files": {}, "existingConfigMap": "company-policies"}
    named = by_kind_name(render(values))
    assert not [k for k in named if k[0] == "Secret"]
    assert ("ConfigMap", "acme-broker-policies") not in named
    for _, spec in pod_specs(named):
        (container,) = spec["containers"]
        assert {"secretRef": {"name": "broker-secrets"}} in container["envFrom"]
        assert {"name": "company-policies"} in [v.get("configMap") for v in spec["volumes"]]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"settings": {"BROKER_BASE_URL": ""}}, "settings.BROKER_BASE_URL is required"),
        ({"secrets": {"BROKER_SECRET_KEY": "short"}}, "at least 32 random characters"),
        ({"secrets": {"BROKER_DATABASE_URL": ""}}, "secrets.BROKER_DATABASE_URL is required"),
        ({"settings": {"OIDC_ISSUER": "x"}}, "only BROKER_* settings belong here"),
        ({"policies": {"files": {}}}, "policies.files is empty"),
        (
            {"secrets": {"BROKER_DATABASE_URL": "sqlite:////var/lib/broker/broker.db"}},
            "on SQLite exactly one scheduler may run",
        ),
        ({"scheduler": {"replicas": 0}}, "at least one scheduler must run"),
    ],
)
def test_incomplete_or_unsafe_values_are_refused_with_the_reason(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError, match=message.replace("*", r"\*")):
        render(production_values(**values))


def test_one_scheduler_on_sqlite_is_allowed() -> None:
    values = production_values(
        secrets={"BROKER_DATABASE_URL": "sqlite:////var/lib/broker/broker.db"},
        scheduler={"replicas": 1},
    )
    scheduler = by_kind_name(render(values))[("Deployment", "acme-broker-scheduler")]
    assert scheduler["spec"]["replicas"] == 1
