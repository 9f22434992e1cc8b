"""deploy/k8s: every manifest validates against the Kubernetes schemas, the overlays render as intended, and
the manifests agree with docker-compose.yml, the serve image and the server's drain settings."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings
from tests.deploy.kustomize_lite import Obj, render
from tests.e2e.compose import ROOT, interpolate, load, service_env

K8S = ROOT / "deploy" / "k8s"
# Oldest Kubernetes the manifests claim (preStop `sleep` needs 1.30) and the newest kubernetes-validate ships.
VERSIONS = ("1.30", "1.37")
KUSTOMIZATIONS = ("model-repository", "base", "overlays/cpu", "overlays/gpu")
# Serve variables the manifests set and compose leaves at the image/Settings defaults, and why.
K8S_ONLY_ENV = {
    "BNFOLD_DRAIN_DELAY_S": "set explicitly so terminationGracePeriodSeconds can be checked against it",
    "BNFOLD_GRACEFUL_TIMEOUT_S": "same",
    "BNFOLD_INTRA_OP_THREADS": "ONNX Runtime would size its pool to the node's cores, not the CPU limit",
}
KSERVE_ONLY = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "model", "containerConcurrency"}


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["predictor"] if obj["kind"] == "InferenceService" else obj["spec"]["template"]["spec"]
    return spec


def container(objects: list[Obj], name: str = "serve") -> Obj:
    containers = pod_spec(one(objects, "Deployment", "bnfold-serve"))["containers"]
    return next(c for c in containers if c["name"] == name)


def env_values(c: Obj) -> dict[str, str | None]:
    """A container's env by name; ``None`` for variables taken from a secret or field."""
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def validate(obj: Obj, version: str) -> None:
    """Kubernetes objects as they are; a KServe predictor as the Pod spec it embeds."""
    if obj["kind"] == "InferenceService":
        spec = {k: v for k, v in obj["spec"]["predictor"].items() if k not in KSERVE_ONLY}
        if "containers" not in spec:
            return
        obj = {"apiVersion": "v1", "kind": "Pod", "metadata": obj["metadata"], "spec": spec}
    kubernetes_validate.validate(obj, version, strict=True)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {name: render(K8S / name) for name in (*KUSTOMIZATIONS, "kserve")}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", (*KUSTOMIZATIONS, "kserve"))
def test_every_rendered_manifest_validates_against_the_kubernetes_schemas(
    rendered: dict[str, list[Obj]], name: str, version: str
) -> None:
    assert rendered[name]
    for obj in rendered[name]:
        validate(obj, version)


def test_every_yaml_file_is_covered_by_a_kustomization(rendered: dict[str, list[Obj]]) -> None:
    """No manifest sits beside the kustomizations unvalidated (patches are validated once applied)."""
    listed: set[Path] = set()
    for directory in (K8S / name for name in (*KUSTOMIZATIONS, "kserve")):
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        listed |= {(directory / r).resolve() for r in kustomization.get("resources", [])}
        listed |= {(directory / p["path"]).resolve() for p in kustomization.get("patches", [])}
    files = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files - listed == set()


def test_validation_rejects_a_broken_manifest(rendered: dict[str, list[Obj]]) -> None:
    deployment = one(rendered["base"], "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    pod_spec(broken)["containers"][0]["readinessProbe"]["httpGet"]["path"] = ["/v2/health/ready"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken, VERSIONS[0])
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    pod_spec(broken)["containers"][0]["readOnlyRootFilesystem"] = True  # belongs in securityContext
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken, VERSIONS[0])


def _normalise(node: Any) -> Any:
    """Lists of named items as dicts by name, so that list order (which kustomize shuffles) does not count."""
    if isinstance(node, dict):
        return {k: _normalise(v) for k, v in node.items()}
    if isinstance(node, list) and node and all(isinstance(i, dict) for i in node):
        for key in ("name", "mountPath"):
            if all(key in i for i in node):
                return {i[key]: _normalise(i) for i in node}
    if isinstance(node, list):
        return [_normalise(i) for i in node]
    return node


def _by_identity(objects: list[Obj]) -> dict[tuple[str, str], Any]:
    return {(o["kind"], o["metadata"]["name"]): _normalise(o) for o in objects}


KUSTOMIZE = shutil.which("kustomize")
KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(not (KUSTOMIZE or KUBECTL), reason="neither kustomize nor kubectl is installed")
@pytest.mark.parametrize("name", (*KUSTOMIZATIONS, "kserve"))
def test_test_side_render_matches_kustomize(rendered: dict[str, list[Obj]], name: str) -> None:
    command = [KUSTOMIZE, "build"] if KUSTOMIZE else [str(KUBECTL), "kustomize"]
    proc = subprocess.run([*command, str(K8S / name)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    expected = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    assert _by_identity(rendered[name]) == _by_identity(expected)


def test_overlays_pick_the_execution_provider_and_the_gpu(rendered: dict[str, list[Obj]]) -> None:
    cpu, gpu = container(rendered["overlays/cpu"]), container(rendered["overlays/gpu"])
    assert env_values(cpu)["BNFOLD_PROVIDERS"] == "cpu"
    assert env_values(gpu)["BNFOLD_PROVIDERS"] == "cuda"
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == gpu["resources"]["requests"]["nvidia.com/gpu"] == "1"
    tolerations = pod_spec(one(rendered["overlays/gpu"], "Deployment"))["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    # everything else is the base's
    for overlay in (cpu, gpu):
        rest = {k: v for k, v in env_values(overlay).items() if k != "BNFOLD_PROVIDERS"}
        assert rest == {k: v for k, v in env_values(container(rendered["base"])).items() if k != "BNFOLD_PROVIDERS"}


def _dockerfile_user() -> int:
    match = re.search(r"^USER (\d+)$", (ROOT / "docker" / "serve.Dockerfile").read_text(), re.MULTILINE)
    assert match, "serve.Dockerfile sets no numeric USER"
    return int(match.group(1))


def test_servers_run_hardened_with_the_repository_read_only(rendered: dict[str, list[Obj]]) -> None:
    for obj in (one(rendered["base"], "Deployment"), one(rendered["kserve"], "InferenceService", "bnfold")):
        pod = pod_spec(obj)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == _dockerfile_user()
        serve = pod["containers"][0]
        assert serve["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        mounts = {m["mountPath"]: m for m in serve["volumeMounts"]}
        repository = mounts[env_values(serve)["BNFOLD_REPOSITORY"]]
        assert repository.get("readOnly") is True
        volume = next(v for v in pod["volumes"] if v["name"] == repository["name"])
        assert volume["persistentVolumeClaim"] == {"claimName": "bnfold-models", "readOnly": True}
        assert set(serve["resources"]["requests"]) >= {"cpu", "memory"}
        assert set(serve["resources"]["limits"]) >= {"cpu", "memory"}


def _settings_from(env: dict[str, str | None], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The server's Settings as the container's environment makes them (each BNFOLD_ name a real field)."""
    fields = {f"BNFOLD_{name.upper()}" for name in Settings.model_fields}
    unknown = {k for k in env if k.startswith("BNFOLD_")} - fields
    assert not unknown, f"no Settings field for {sorted(unknown)}"
    for key in list(os.environ):
        if key.startswith("BNFOLD_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if value is not None:
            monkeypatch.setenv(key, value)
    return Settings()


def test_probes_and_termination_match_the_server_drain(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for obj in (one(rendered["base"], "Deployment"), one(rendered["kserve"], "InferenceService", "bnfold")):
        pod = pod_spec(obj)
        serve = pod["containers"][0]
        settings = _settings_from(env_values(serve), monkeypatch)
        ports = {p["name"]: p["containerPort"] for p in serve["ports"]}
        assert ports == {"http": settings.port, "grpc": settings.grpc_port}
        for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
            get = serve[probe]["httpGet"]
            assert get["path"] == path
            assert ports.get(get["port"], get["port"]) == settings.port
        pre_stop = serve["lifecycle"]["preStop"]["sleep"]["seconds"]
        needed = pre_stop + settings.drain_delay_s + settings.graceful_timeout_s
        assert pod["terminationGracePeriodSeconds"] >= needed + 5, "SIGKILL would cut the drain short"


def test_service_hpa_and_pdb_point_at_the_serving_pods(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["base"]
    deployment = one(objects, "Deployment", "bnfold-serve")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = one(objects, "Service", "bnfold-serve")
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"]: p for p in container(objects)["ports"]}
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {"http": "http", "grpc": "grpc"}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {n: p["containerPort"] for n, p in ports.items()}
    hpa = one(objects, "HorizontalPodAutoscaler", "bnfold-serve")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bnfold-serve"}
    pdb = one(objects, "PodDisruptionBudget", "bnfold-serve")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"], "a disruption could take every replica"


def test_export_job_fills_the_repository_that_the_servers_mount(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["model-repository"]
    job = pod_spec(one(objects, "Job", "bnfold-export"))
    compose = load()["services"]
    steps = {c["name"]: c for c in job["initContainers"] + job["containers"]}
    assert [c["name"] for c in job["initContainers"]] == ["train"]
    assert [c["name"] for c in job["containers"]] == ["export"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in job["volumes"] if "persistentVolumeClaim" in v
    }
    for name, step in steps.items():
        assert step["image"] == interpolate(compose[name]["image"], {})
        assert step["command"] == compose[name]["command"]
        assert env_values(step) == service_env(name), f"{name}: env differs from compose"
        assert step["securityContext"]["readOnlyRootFilesystem"] is True
    export_mounts = {m["mountPath"]: m for m in steps["export"]["volumeMounts"]}
    repository = export_mounts[env_values(steps["export"])["BNFOLD_REPOSITORY"] or ""]
    assert claims[repository["name"]] == "bnfold-models" and not repository.get("readOnly")
    assert {c["metadata"]["name"] for c in objects if c["kind"] == "PersistentVolumeClaim"} >= set(claims.values())
    assert "ReadWriteMany" in one(objects, "PersistentVolumeClaim", "bnfold-models")["spec"]["accessModes"]


def test_kserve_inference_services_carry_the_required_fields(rendered: dict[str, list[Obj]]) -> None:
    services = {o["metadata"]["name"]: o for o in rendered["kserve"] if o["kind"] == "InferenceService"}
    assert set(services) == {"bnfold", "bnfold-triton"}
    for isvc in services.values():
        assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"])
        predictor = isvc["spec"]["predictor"]
        assert ("containers" in predictor) != ("model" in predictor), "a predictor is a model or containers"
    custom = services["bnfold"]["spec"]["predictor"]["containers"][0]
    assert custom["name"] == "kserve-container" and custom["image"].startswith("bnfold-serve:")
    assert env_values(custom) == env_values(container(rendered["base"])), "the custom predictor drifted from base"
    predictor, hpa = services["bnfold"]["spec"]["predictor"], one(rendered["base"], "HorizontalPodAutoscaler")["spec"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == (
        "cpu",
        hpa["metrics"][0]["resource"]["target"]["averageUtilization"],
    )
    model = services["bnfold-triton"]["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "onnx" and model["runtime"] == "kserve-tritonserver"
    assert model["protocolVersion"] == "v2" and model["storageUri"] == "pvc://bnfold-models"


def test_compose_and_manifests_agree_on_ports_probes_and_environment(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    compose = load()["services"]["serve"]
    serve = container(rendered["base"])
    k8s_env, compose_env = env_values(serve), service_env("serve")
    # environment: the same variables with the same defaults; the API key comes from a Secret instead
    assert set(k8s_env) - set(compose_env) == set(K8S_ONLY_ENV)
    assert set(compose_env) <= set(k8s_env)
    differing = {k for k in compose_env if compose_env[k] != k8s_env[k]}
    assert differing == {"BNFOLD_API_KEY"} and k8s_env["BNFOLD_API_KEY"] is None
    assert serve["image"] == interpolate(compose["image"], {})
    # ports: compose publishes the HTTP and gRPC container ports that the probes and the Service use
    published = {int(p.rsplit(":", 1)[1]) for p in compose["ports"]}
    assert published == {int(compose_env["BNFOLD_PORT"]), int(compose_env["BNFOLD_GRPC_PORT"])}
    assert published == {p["containerPort"] for p in serve["ports"]}
    # probes: compose's healthcheck script asks the readiness route, as the readiness probe does
    healthcheck = (ROOT / "docker" / "entrypoints" / "healthcheck.py").read_text()
    assert serve["readinessProbe"]["httpGet"]["path"] in healthcheck
    # drain: both give the server at least its drain delay and graceful timeout before SIGKILL
    settings = _settings_from(k8s_env, monkeypatch)
    grace = int(compose["stop_grace_period"].rstrip("s"))
    assert grace >= settings.drain_delay_s + settings.graceful_timeout_s
