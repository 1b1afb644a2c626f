"""Helpers of the Kubernetes manifest tests: render overlays (offline: kubectl's built-in
kustomize), walk the rendered objects and their Pod templates."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("dev", "prod")
# Overlays plus the KServe alternative, which an overlay opts into as a component.
VARIANTS = {
    "dev": ("overlays/dev", None),
    "prod": ("overlays/prod", None),
    "dev+kserve": ("overlays/dev", "components/kserve"),
    "prod+kserve": ("overlays/prod", "components/kserve"),
}
NAMESPACES = {"dev": "dae-dev", "prod": "dae"}

DAE_IMAGE = "dae"  # the image the Dockerfile builds, as named in k8s/base
POD_KINDS = {"Deployment", "Job", "CronJob"}
KSERVE_MODEL_FIELDS = {"modelFormat", "runtime", "runtimeVersion", "storageUri", "protocolVersion"}
KSERVE_PREDICTOR_FIELDS = {
    "model", "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
    "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher",
    "annotations", "labels", "deploymentStrategy", "autoScaling",
}  # fmt: skip


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if not found:
        pytest.fail(
            "kubectl not found on PATH: the Kubernetes manifest tests render k8s/overlays with "
            "`kubectl kustomize` (kubectl >= 1.27 has kustomize built in); install kubectl",
            pytrace=False,
        )
    return found


def render(path: Path) -> list[dict]:
    proc = subprocess.run(
        [_kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {path} failed:\n{proc.stderr}", pytrace=False)
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def find(objects: list[dict], kind: str, name: str) -> dict:
    found = by_kind(objects, kind)
    assert name in found, f"no {kind}/{name} among {sorted(found)}"
    return found[name]


def pod_template(obj: dict) -> dict:
    """The Pod template of a Deployment, Job or CronJob."""
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return obj["spec"]["template"]


def pod_templates(objects: list[dict]):
    """(label, pod template) for every Pod the objects make, custom resources included."""
    for o in objects:
        name = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in POD_KINDS:
            yield name, pod_template(o)
        elif o["kind"] == "FlinkDeployment":
            for role in ("jobManager", "taskManager"):
                tpl = o["spec"][role]["podTemplate"]
                # The operator layers the role's template over the top-level one.
                spec = {**o["spec"]["podTemplate"]["spec"], **tpl["spec"]}
                yield f"{name} {role}", {"metadata": tpl.get("metadata", {}), "spec": spec}
        elif o["kind"] == "InferenceService":
            # The predictor is a PodSpec plus KServe's fields; its model a Container plus them.
            predictor = o["spec"]["predictor"]
            model = {k: v for k, v in predictor["model"].items() if k not in KSERVE_MODEL_FIELDS}
            spec = {k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS}
            container = {"name": "kserve-container", **model}
            yield f"{name} predictor", {"metadata": {}, "spec": {**spec, "containers": [container]}}


def containers(pod: dict) -> list[dict]:
    return pod["spec"].get("initContainers", []) + pod["spec"]["containers"]


def is_dae(container: dict) -> bool:
    image = container.get("image", "")
    repo = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image
    return repo.split("/")[-1] == DAE_IMAGE


def labels_match(selector: dict, labels: dict) -> bool:
    """matchLabels / matchExpressions (In, NotIn, Exists, DoesNotExist), or a plain map."""
    match = (
        selector.get("matchLabels", {})
        if "matchLabels" in selector or "matchExpressions" in selector
        else selector
    )
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True
