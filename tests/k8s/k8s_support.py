"""Helpers of the Kubernetes manifest tests: render overlays (offline: kubectl's built-in
kustomize), as they are or with a component added the way the README says, walk the rendered
objects and their Pod templates (an Argo WorkflowTemplate's steps included, as the Pods Argo
makes of them), validate custom resources against their operators' CRDs or Argo's schema,
and evaluate NetworkPolicies."""

from __future__ import annotations

import gzip
import ipaddress
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml
from argo_rules import fill

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
CRDS = Path(__file__).resolve().parent / "crds"
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
POD_KINDS = {"Deployment", "Job", "CronJob", "StatefulSet"}
KSERVE_MODEL_FIELDS = {"modelFormat", "runtime", "runtimeVersion", "storageUri", "protocolVersion"}
KSERVE_PREDICTOR_FIELDS = {
    "model",
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "scaleMetricType",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "annotations",
    "labels",
    "deploymentStrategy",
    "autoScaling",
}


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


def guide() -> str:
    """docs/kubernetes.md, the cluster guide the README links to."""
    return (REPO / "docs" / "kubernetes.md").read_text()


def guide_manifests() -> list[dict]:
    """The objects the guide's `kubectl apply -f - <<'YAML'` commands create."""
    blocks = re.findall(r"<<'YAML'\n(.*?)\nYAML\n", guide(), flags=re.S)
    assert blocks, "no `kubectl apply -f - <<'YAML'` command in docs/kubernetes.md"
    return [yaml.safe_load(b) for b in blocks]


def guide_commands() -> list[str]:
    """Each shell line of the guide's code blocks (a `\\`-continued line joined, heredoc
    bodies left out)."""
    lines = []
    for block in re.findall(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", guide(), flags=re.S | re.M):
        block = re.sub(r"<<'YAML'\n.*?\nYAML\n", "<<'YAML'\n", block, flags=re.S)
        lines += [ln.strip() for ln in block.replace("\\\n", " ").splitlines() if ln.strip()]
    return lines


def copy_tree(tmp: Path) -> Path:
    """A copy of k8s/ to edit an overlay in (relative paths inside keep working)."""
    copy = tmp / "k8s"
    shutil.copytree(K8S, copy)
    return copy


def add_component(k8s: Path, overlay: str, component: str) -> Path:
    """The README's opt-in, literally: `../../<component>` appended to the overlay's
    `components:` list (created if the overlay has none)."""
    path = k8s / overlay / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    kustomization.setdefault("components", []).append(f"../../{component}")
    path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return k8s / overlay


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def find(objects: list[dict], kind: str, name: str) -> dict:
    found = by_kind(objects, kind)
    assert name in found, f"no {kind}/{name} among {sorted(found)}"
    return found[name]


def pod_template(obj: dict) -> dict:
    """The Pod template of a Deployment, StatefulSet, Job or CronJob."""
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return obj["spec"]["template"]


def flink_pod_labels(flink: dict, role: str) -> dict:
    """The labels Flink itself puts on a native session cluster's Pods (its KubernetesUtils'
    constants), whatever the pod templates say."""
    component = {"jobManager": "jobmanager", "taskManager": "taskmanager"}[role]
    return {
        "app": flink["metadata"]["name"],
        "type": "flink-native-kubernetes",
        "component": component,
    }


def pod_templates(objects: list[dict]):
    """(label, pod template) for every Pod the objects make, custom resources included. The
    labels of a FlinkDeployment's Pods include Flink's own, those of KServe's predictor
    KServe's `serving.kserve.io/inferenceservice`, those of a workflow's Pods Argo's."""
    for o in objects:
        name = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in POD_KINDS:
            yield name, pod_template(o)
        elif o["kind"] == "WorkflowTemplate":
            yield from argo_pods(o)
        elif o["kind"] == "FlinkDeployment":
            top = o["spec"]["podTemplate"]
            for role in ("jobManager", "taskManager"):
                tpl = o["spec"][role]["podTemplate"]
                # The operator layers the role's template over the top-level one.
                spec = {**top["spec"], **tpl["spec"]}
                labels = {
                    **top.get("metadata", {}).get("labels", {}),
                    **tpl.get("metadata", {}).get("labels", {}),
                    **flink_pod_labels(o, role),
                }
                yield f"{name} {role}", {"metadata": {"labels": labels}, "spec": spec}
        elif o["kind"] == "InferenceService":
            # The predictor is a PodSpec plus KServe's fields; its model a Container plus them.
            predictor = o["spec"]["predictor"]
            model = {k: v for k, v in predictor["model"].items() if k not in KSERVE_MODEL_FIELDS}
            spec = {k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS}
            container = {"name": "kserve-container", **model}
            labels = {
                **predictor.get("labels", {}),
                "serving.kserve.io/inferenceservice": o["metadata"]["name"],
                "component": "predictor",  # KServe's constants.KServiceComponentLabel
            }
            metadata = {"labels": labels, "annotations": predictor.get("annotations", {})}
            yield (
                f"{name} predictor",
                {"metadata": metadata, "spec": {**spec, "containers": [container]}},
            )


# ---- Argo Workflows ------------------------------------------------------------------------

SAMPLE_WORKFLOW = "dae-retrain-1767236400"  # what Argo names a CronWorkflow's run
ARGO_LABEL = "workflows.argoproj.io/workflow"  # on every Pod of a workflow


def argo_values(workflow_template: dict, template: dict | None = None) -> dict[str, str]:
    """What Argo fills in: the workflow's name and parameters, a template's inputs."""
    spec = workflow_template["spec"]
    values = {"workflow.name": SAMPLE_WORKFLOW}
    for p in spec.get("arguments", {}).get("parameters", []):
        values[f"workflow.parameters.{p['name']}"] = p["value"]
    for p in (template or {}).get("inputs", {}).get("parameters", []):
        values[f"inputs.parameters.{p['name']}"] = p.get("value", "0")
    return values


def embedded_job(workflow_template: dict, template: dict) -> dict:
    """The Job a resource step creates, as Argo hands it to the API server."""
    manifest = fill(template["resource"]["manifest"], argo_values(workflow_template, template))
    return yaml.safe_load(manifest)


def argo_pods(wft: dict):
    """(label, pod template) of each Pod a WorkflowTemplate's steps make: a container step's
    Pod (its container is Argo's `main`; the workflow's podMetadata, securityContext, account
    and volumes), and the Pods of the Job a resource step creates. Argo's own init and wait
    containers are the controller's (its executor settings), not the template's."""
    spec, name = wft["spec"], wft["metadata"]["name"]
    meta = spec.get("podMetadata", {})
    for t in spec["templates"]:
        if "container" in t:
            labels = {
                **meta.get("labels", {}),
                ARGO_LABEL: SAMPLE_WORKFLOW,
                **t.get("metadata", {}).get("labels", {}),
            }
            annotations = {
                **meta.get("annotations", {}),
                **t.get("metadata", {}).get("annotations", {}),
            }
            pod = {
                k: spec[k]
                for k in (
                    "securityContext",
                    "automountServiceAccountToken",
                    "serviceAccountName",
                    "volumes",
                )
                if k in spec
            }
            if t.get("volumes"):  # Argo adds a template's own volumes to the workflow's
                pod["volumes"] = pod.get("volumes", []) + t["volumes"]
            pod["containers"] = [{"name": "main", **t["container"]}]
            if t.get("initContainers"):
                pod["initContainers"] = t["initContainers"]
            metadata = {"labels": labels, "annotations": annotations}
            yield f"WorkflowTemplate/{name} {t['name']}", {"metadata": metadata, "spec": pod}
        elif "resource" in t:
            job = embedded_job(wft, t)
            if job["kind"] == "Job":
                yield f"WorkflowTemplate/{name} {t['name']} Job", job["spec"]["template"]


def workflow_pods(objects) -> dict[str, dict]:
    """{name: labels} of the Pods a workflow's steps make (Argo labels them)."""
    return {
        name: pod["metadata"]["labels"]
        for name, pod in pod_templates(objects)
        if ARGO_LABEL in pod["metadata"]["labels"]
    }


def api_clients(objects) -> dict[str, dict]:
    """The Pods that call the API server: a workflow's (Argo's executor) and any that mounts
    a service account token of its own (a projected serviceAccountToken volume)."""
    out = workflow_pods(objects)
    for name, pod in pod_templates(objects):
        for volume in pod["spec"].get("volumes", []):
            sources = volume.get("projected", {}).get("sources", [])
            if any("serviceAccountToken" in source for source in sources):
                out[name] = pod["metadata"]["labels"]
    return out


def embedded_jobs(objects: list[dict]) -> list[dict]:
    """The Jobs the workflows' resource steps create."""
    return [
        embedded_job(o, t)
        for o in objects
        if o["kind"] == "WorkflowTemplate"
        for t in o["spec"]["templates"]
        if "resource" in t
    ]


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


# ---- custom resources ------------------------------------------------------------------------


def _strict(schema):
    """What `kubectl apply` (server-side strict field validation) enforces: an object schema
    with properties admits no other field unless it preserves unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """{(apiVersion, kind): strict JSON schema} of the CRDs in tests/k8s/crds (see its
    README: the operators' and Cilium's released CRDs, their served version's
    openAPIV3Schema)."""
    out = {}
    for path in sorted(CRDS.glob("*-v*.json.gz")):
        if path.name.endswith(".schema.json.gz"):
            continue  # Argo's own JSON schema (argo_rules.argo_errors), not a CRD's
        crd = json.loads(gzip.decompress(path.read_bytes()))
        root = crd["openAPIV3Schema"]
        props = root.setdefault("properties", {})
        for key, kind in (("apiVersion", "string"), ("kind", "string"), ("metadata", "object")):
            props.setdefault(key, {"type": kind})  # the API server's, implicit in CRDs
        out[(f"{crd['group']}/{crd['version']}", crd["kind"])] = _strict(root)
    return out


def crd_errors(obj: dict) -> list[str]:
    import jsonschema

    schema = crd_schemas()[(obj["apiVersion"], obj["kind"])]
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)
    ]


# ---- NetworkPolicies ---------------------------------------------------------------------------


def selecting(policies, labels: dict, kind: str) -> list[dict]:
    """The policies of a type (Ingress / Egress) that select a Pod with these labels."""
    return [
        p
        for p in policies
        if kind in p["spec"].get("policyTypes", ["Ingress"])
        and labels_match(p["spec"]["podSelector"], labels)
    ]


def _port_ok(rule: dict, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    return any(
        p.get("protocol", "TCP") == protocol
        and (p.get("port") is None or p["port"] == port or port <= p.get("endPort", -1))
        for p in ports
    )


def _peer_ok(peer: dict, labels: dict | None, namespace_labels: dict | None, ip: str | None):
    if "ipBlock" in peer:
        if ip is None:
            return False
        block = peer["ipBlock"]
        addr = ipaddress.ip_address(ip)
        inside = addr in ipaddress.ip_network(block["cidr"])
        return inside and not any(addr in ipaddress.ip_network(e) for e in block.get("except", []))
    if labels is None:
        return False
    if "namespaceSelector" in peer:
        if namespace_labels is None or not labels_match(
            peer["namespaceSelector"], namespace_labels
        ):
            return False
    elif namespace_labels is not None:
        return False  # a podSelector alone means the policy's own namespace
    return labels_match(peer.get("podSelector", {}), labels)


def allows(policies, direction: str, pod: dict, peer: dict, port: int, protocol="TCP") -> bool:
    """Whether traffic between `pod` (labels of the Pod the policies protect) and `peer` is
    allowed in `direction` (Ingress: peer -> pod, Egress: pod -> peer) on port/protocol.
    `peer` is {"labels": ..., "namespace": labels of another namespace or None for the same,
    "ip": address outside the cluster}."""
    chosen = selecting(policies, pod, direction)
    if not chosen:
        return True  # not isolated in that direction
    key = "from" if direction == "Ingress" else "to"
    rules = [r for p in chosen for r in p["spec"].get(direction.lower(), [])]
    for rule in rules:
        peers = rule.get(key)
        if peers is None or peers == []:
            peer_ok = True  # no `from`/`to`: every source / destination
        else:
            peer_ok = any(
                _peer_ok(p, peer.get("labels"), peer.get("namespace"), peer.get("ip"))
                for p in peers
            )
        if peer_ok and _port_ok(rule, port, protocol):
            return True
    return False
