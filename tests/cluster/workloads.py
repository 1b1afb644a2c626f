"""Shared support of the scenario tests: the test overlay (tests/cluster/overlay) rendered into a
namespace, applied, and Argo Workflows watched from outside as a user would (kubectl only; the
argo CLI is not built).

`render` adapts what this one node cannot do as shipped, and nothing else: every image is
loaded into containerd, none can be pulled (imagePullPolicy Always would ask the registry), and
2 cores cannot hold the prod requests of tune's and train's workers side by side, so requests
are capped (limits, which decide OOM kills and throttling, stay as shipped)."""

from __future__ import annotations

import gzip
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from cluster import ClusterError

NAMESPACE = "dae"
OVERLAY = Path(__file__).resolve().parent / "overlay"
CRDS = Path(__file__).resolve().parents[1] / "k8s" / "crds"
PULL_POLICY = "IfNotPresent"
REQUEST_CAPS = {"cpu": 0.05, "memory": 256 * 2**20}  # cores, bytes
FINAL_PHASES = ("Succeeded", "Failed", "Error")
UNITS = {"": 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}


class WorkloadError(AssertionError):
    """A workload did not reach what the test waited for; the message carries what the
    cluster said (the workflow's nodes, failed Pods' logs)."""


# -- rendering ---------------------------------------------------------------------------------
def render(
    cluster, namespace: str = NAMESPACE, variant: str = "running", adapt: bool = True
) -> list[dict]:
    """`kubectl kustomize` of overlay/<variant> (test: the whole prod overlay; running: what
    runs here; kserve: the KServe opt-in) into `namespace`, adapted to this node (`adapt`)."""
    with tempfile.TemporaryDirectory(prefix="dae-overlay-") as tmp:
        Path(tmp, "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "namespace": namespace,
                    "resources": [
                        os.path.relpath(OVERLAY / variant, tmp)
                    ],  # kustomize: relative only
                }
            )
        )
        text = cluster.kubectl("kustomize", tmp)
    docs = [d for d in yaml.safe_load_all(text) if d]
    return [adapt_to_node(d) for d in docs] if adapt else docs


def quantity(value) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value).strip("'\"")).groups()
    return float(number) * UNITS[unit]


def _cap(requests: dict) -> None:
    for resource, cap in REQUEST_CAPS.items():
        if resource in requests and quantity(requests[resource]) > cap:
            requests[resource] = (
                f"{round(cap * 1000)}m" if resource == "cpu" else f"{round(cap / 2**20)}Mi"
            )


def _manifest_text(text: str) -> str:
    """A resource step's manifest stays text (its bare `{{...}}` integers are Argo's, filled
    in before it is parsed): the same two changes, made on its lines."""
    text = text.replace("imagePullPolicy: Always", f"imagePullPolicy: {PULL_POLICY}")

    def cap(match: re.Match) -> str:
        requests = {match["res"]: match["value"]}
        _cap(requests)
        return f"{match['indent']}{match['res']}: {requests[match['res']]}"

    def requests_block(block: re.Match) -> str:
        return re.sub(r"(?m)^(?P<indent>\s+)(?P<res>cpu|memory): (?P<value>\S+)$", cap, block[0])

    return re.sub(r"(?m)^(\s+)requests:\n(?:\1\s+\S.*\n)+", requests_block, text)


def adapt_to_node(node):
    """Every container: pulled only if absent, requests capped (module docstring)."""
    if isinstance(node, list):
        return [adapt_to_node(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: adapt_to_node(v) for k, v in node.items()}
    if ("image" in out and "name" in out) or "imagePullPolicy" in out:
        out["imagePullPolicy"] = PULL_POLICY
        _cap(out.get("resources", {}).get("requests", {}))
    if isinstance(out.get("manifest"), str):
        out["manifest"] = _manifest_text(out["manifest"])
    return out


def operator_crds() -> list[dict]:
    """The Flink operator's and KServe's CRDs (their released served version, whose schemas
    tests/k8s/crds keeps): the API server then validates the overlay's FlinkDeployment and
    InferenceService as on a cluster with those operators installed."""
    docs = []
    for path in sorted(CRDS.glob("*.json.gz")):
        crd = json.loads(gzip.decompress(path.read_bytes()))
        if crd.get("group") not in ("flink.apache.org", "serving.kserve.io"):
            continue
        plural = path.name.split(".", 1)[0]
        docs.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.{crd['group']}"},
                "spec": {
                    "group": crd["group"],
                    "names": {
                        "kind": crd["kind"],
                        "plural": plural,
                        "singular": crd["kind"].lower(),
                        "listKind": f"{crd['kind']}List",
                    },
                    "scope": "Namespaced",
                    "versions": [
                        {
                            "name": crd["version"],
                            "served": True,
                            "storage": True,
                            "schema": {"openAPIV3Schema": crd["openAPIV3Schema"]},
                            "subresources": {"status": {}},
                        }
                    ],
                },
            }
        )
    return docs


# -- applying ----------------------------------------------------------------------------------
def apply(cluster, docs: list[dict], dry_run: bool = False) -> str:
    """Server-side apply (as a user's `kubectl apply --server-side`); `dry_run`: the API
    server admits and validates everything, stores nothing."""
    flags = ["--server-side", "--force-conflicts"]
    if dry_run:
        flags.append("--dry-run=server")
    return cluster.kubectl("apply", *flags, "-f", "-", input=yaml.safe_dump_all(docs), timeout=180)


def metadata_secret(namespace: str) -> dict:
    """Secret dae-metadata as the guide creates it (docs/kubernetes.md): the database's
    password and the pipeline's URL."""
    password = secrets.token_hex(16)
    url = f"postgresql+psycopg://dae:{password}@dae-postgres:5432/dae"
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "dae-metadata", "namespace": namespace},
        "stringData": {"password": password, "url": url},
    }


def claim_volumes(cluster, namespace: str, docs: list[dict]) -> list[dict]:
    """PersistentVolumes bound ahead to the overlay's claims in `namespace` (no provisioner
    runs here); the dae namespace takes addons.py's. hostPath folders under the cluster's run
    folder, owned by the user that writes them."""
    if namespace == NAMESPACE:
        return []
    claims = [
        (d["metadata"]["name"], d["spec"]) for d in docs if d["kind"] == "PersistentVolumeClaim"
    ]
    for d in docs:
        if d["kind"] == "StatefulSet":
            for t in d["spec"].get("volumeClaimTemplates", ()):
                claims.append((f"{t['metadata']['name']}-{d['metadata']['name']}-0", t["spec"]))
    volumes = []
    for name, spec in claims:
        path = cluster.run / "volumes" / f"{namespace}-{name}"
        path.mkdir(parents=True, exist_ok=True)
        uid = 999 if "postgres" in name else 10001
        shutil.chown(path, uid, uid)
        path.chmod(0o770)
        volumes.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"{namespace}-{name}"},
                "spec": {
                    "storageClassName": spec.get("storageClassName", "dae-rwo"),
                    "accessModes": spec["accessModes"],
                    "capacity": spec["resources"]["requests"],
                    "persistentVolumeReclaimPolicy": "Delete",
                    "claimRef": {"namespace": namespace, "name": name},
                    "hostPath": {"path": str(path), "type": "Directory"},
                },
            }
        )
    return volumes


def deploy(cluster, namespace: str = NAMESPACE, variant: str = "running") -> list[dict]:
    """Render and apply the overlay into `namespace` (the Namespace first, then the Secret the
    guide has users create, then everything); applying again changes nothing. Returns what
    was applied."""
    docs = render(cluster, namespace, variant)
    first = [d for d in docs if d["kind"] == "Namespace"]
    apply(cluster, first)
    try:
        cluster.kubectl("-n", namespace, "get", "secret", "dae-metadata")
    except ClusterError:  # absent: created once (the database keeps its first password)
        apply(cluster, [metadata_secret(namespace)])
    volumes = claim_volumes(cluster, namespace, docs)
    apply(cluster, volumes + [d for d in docs if d["kind"] != "Namespace"])
    return docs


_DEPLOYED: dict[str, list[dict]] = {}


def deployed(cluster, namespace: str = NAMESPACE) -> list[dict]:
    """`deploy` once per test session and namespace (the scenario modules share it: a first
    apply makes one first run, which scenarios a-d and g all look at)."""
    if namespace not in _DEPLOYED:
        _DEPLOYED[namespace] = deploy(cluster, namespace)
    return _DEPLOYED[namespace]


FIRST_RUN = "dae-first-run"
FIRST_RUN_TIMEOUT = 1800  # s: the smoke config's whole DAG on 2 cores, Pod starts included


def first_run(cluster, namespace: str = NAMESPACE) -> dict:
    """The first apply's Workflow once it has succeeded (the first model pushed)."""
    deployed(cluster, namespace)
    return wait_for_phase(cluster, FIRST_RUN, namespace, timeout=FIRST_RUN_TIMEOUT)


def delete_namespace(cluster, namespace: str) -> None:
    cluster.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false")


def reset(cluster, namespace: str = NAMESPACE, timeout: int = 300) -> None:
    """The namespace gone (waited for) and the volumes its claims held emptied and released
    (hostPath data stays on a Retain volume), so the next `deploy` is a first apply again."""
    cluster.kubectl(
        "delete", "namespace", namespace, "--ignore-not-found", f"--timeout={timeout}s",
        timeout=timeout + 10,
    )  # fmt: skip
    for pv in items(cluster, "", "persistentvolumes"):
        ref = pv["spec"].get("claimRef") or {}
        if ref.get("namespace") != namespace:
            continue
        path = Path(pv["spec"]["hostPath"]["path"])
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        patch = json.dumps({"spec": {"claimRef": None}})
        cluster.kubectl("patch", "pv", pv["metadata"]["name"], "--type=merge", "-p", patch)
    _DEPLOYED.pop(namespace, None)


# -- workflows ---------------------------------------------------------------------------------
def get(cluster, namespace: str, kind: str, name: str) -> dict:
    return json.loads(cluster.kubectl("-n", namespace, "get", kind, name, "-o", "json"))


def items(cluster, namespace: str, kind: str, selector: str = "") -> list[dict]:
    args = (["-n", namespace] if namespace else []) + ["get", kind, "-o", "json"]
    if selector:
        args += ["-l", selector]
    return json.loads(cluster.kubectl(*args))["items"]


def submit(
    cluster,
    namespace: str = NAMESPACE,
    template: str = "dae-pipeline",
    parameters: dict[str, str] | None = None,
    prefix: str = "dae-test-",
) -> str:
    """A Workflow from the WorkflowTemplate, as `argo submit --from workflowtemplate/...`
    makes it; returns its name."""
    spec: dict = {"workflowTemplateRef": {"name": template}}
    if parameters:
        spec["arguments"] = {
            "parameters": [{"name": k, "value": str(v)} for k, v in parameters.items()]
        }
    return create_workflow(cluster, spec, namespace, prefix)


def create_workflow(cluster, spec: dict, namespace: str, prefix: str) -> str:
    """A Workflow of this spec, named by the API server after `prefix`; returns its name."""
    doc = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": prefix, "namespace": namespace},
        "spec": spec,
    }
    out = cluster.kubectl("create", "-f", "-", "-o", "name", input=yaml.safe_dump(doc))
    return out.strip().split("/")[-1]


def workflow_nodes(workflow: dict) -> list[dict]:
    """The workflow's nodes (status.nodes), each with its id."""
    return [{"id": k, **v} for k, v in workflow.get("status", {}).get("nodes", {}).items()]


def pods(cluster, namespace: str, selector: str = "") -> list[dict]:
    return items(cluster, namespace, "pods", selector)


def logs(cluster, namespace: str, pod: str, container: str | None = None, tail: int = 40) -> str:
    args = ["-n", namespace, "logs", pod, f"--tail={tail}"]
    args += ["-c", container] if container else ["--all-containers"]
    try:
        return cluster.kubectl(*args, timeout=30)
    except Exception as err:  # noqa: BLE001 - diagnostics must not hide the failure itself
        return f"(no logs: {err})"


def diagnostics(cluster, namespace: str, name: str | None = None) -> str:
    """What a failed wait reports: the workflow's nodes and phase messages, the namespace's
    Pods that are not Running/Succeeded with their containers' last lines, recent events."""
    lines = []
    if name:
        try:
            wf = get(cluster, namespace, "workflow", name)
            status = wf.get("status", {})
            lines.append(f"workflow {name}: {status.get('phase')} {status.get('message', '')}")
            for n in sorted(workflow_nodes(wf), key=lambda n: n.get("startedAt") or ""):
                lines.append(
                    f"  {n.get('displayName')} [{n.get('type')}] {n.get('phase')}"
                    f" {n.get('message', '')}"
                )
        except Exception as err:  # noqa: BLE001
            lines.append(f"workflow {name}: {err}")
    for pod in pods(cluster, namespace):
        phase = pod["status"].get("phase")
        states = [
            f"{c['name']}={next(iter(c.get('state', {})), '?')}"
            for c in pod["status"].get("containerStatuses", [])
            + pod["status"].get("initContainerStatuses", [])
        ]
        lines.append(f"pod {pod['metadata']['name']}: {phase} {' '.join(states)}")
        if phase not in ("Running", "Succeeded"):
            lines.append(logs(cluster, namespace, pod["metadata"]["name"]))
    try:
        lines.append(
            cluster.kubectl(
                "-n", namespace, "get", "events", "--sort-by=.lastTimestamp", timeout=30
            )[-3000:]
        )
    except Exception as err:  # noqa: BLE001
        lines.append(f"events: {err}")
    return "\n".join(lines)


def wait_for(cluster, what: str, check, timeout: float, namespace: str, name: str | None = None):
    """Poll `check()` every 2 s until it returns something truthy (returned), or fail after
    `timeout` seconds with the namespace's diagnostics."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise WorkloadError(
                f"{what}: not within {timeout:.0f} s\n{diagnostics(cluster, namespace, name)}"
            )
        time.sleep(2)


def wait_for_phase(
    cluster,
    name: str,
    namespace: str = NAMESPACE,
    phases: tuple[str, ...] = ("Succeeded",),
    timeout: float = 900,
) -> dict:
    """The workflow once its phase is one of `phases`; a final phase that is not one of them
    fails at once (with diagnostics), as does the timeout."""

    def check():
        wf = get(cluster, namespace, "workflow", name)
        phase = wf.get("status", {}).get("phase")
        if phase in phases:
            return wf
        if phase in FINAL_PHASES:
            raise WorkloadError(
                f"workflow {name} ended {phase}, not {phases}\n"
                f"{diagnostics(cluster, namespace, name)}"
            )
        return None

    return wait_for(cluster, f"workflow {name} {phases}", check, timeout, namespace, name)


def rollout(cluster, namespace: str, kind_name: str, timeout: int = 300) -> None:
    """`kubectl rollout status`, with diagnostics when it does not finish."""
    try:
        cluster.kubectl(
            "-n",
            namespace,
            "rollout",
            "status",
            kind_name,
            f"--timeout={timeout}s",
            timeout=timeout + 10,
        )
    except (subprocess.TimeoutExpired, ClusterError) as err:
        raise WorkloadError(f"{kind_name}: {err}\n{diagnostics(cluster, namespace)}") from err
