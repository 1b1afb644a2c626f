"""What the cluster runs on top of the node: the storage the prod overlay's claims bind to,
CoreDNS (`kube-dns` at 10.96.0.10, k8s-app=kube-dns as the manifests' policies select it),
the NetworkPolicy enforcer (policies.py) and Argo Workflows' controller from its own
cluster-install manifests. They run as Pods from images made here out of the binaries built
here (one static binary on an empty base, with the user its upstream image sets)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import build
import node
import policies
import yaml
from binary_image import BinaryImage

ARGO_VERSION = build.argo_version()
REQUEUE_TIME = "2s"
COREDNS_IMAGE = "registry.k8s.io/coredns/coredns:dae-local"
CONTROLLER_IMAGE = f"quay.io/argoproj/workflow-controller:{ARGO_VERSION}"
IMAGES = (
    BinaryImage("coredns", COREDNS_IMAGE, "65532", "/coredns"),
    BinaryImage("workflow-controller", CONTROLLER_IMAGE, "8737", "/bin/workflow-controller"),
)
# The classes and volumes the prod overlay's claims bind to (no provisioner can run here):
# dae-root (ReadWriteMany, class dae-rwx, written by uid 10001) and PostgreSQL's data (class
# dae-rwo, the overlay's second STORAGE CLASS patch; also the default class; uid 999).
STORAGE_CLASSES = (("dae-rwx", False), ("dae-rwo", True))
VOLUMES = (
    ("dae-root", "dae-rwx", "ReadWriteMany", "50Gi", 10001),
    ("dae-postgres-data", "dae-rwo", "ReadWriteOnce", "10Gi", 999),
)


def install(cluster, bin_dir: Path, start) -> dict:
    """Everything above; returns what policies.install says of the NetworkPolicy enforcer."""
    cluster.import_images({i.name: i.archive(bin_dir, cluster.cache) for i in IMAGES})
    apply(cluster, storage(cluster.run / "volumes"))
    apply(cluster, coredns())
    apply(cluster, argo(cluster, bin_dir), server_side=True)
    enforcer = policies.install(cluster, bin_dir, start)
    for namespace, kind, name in (
        ("kube-system", "deployment", "coredns"),
        ("argo", "deployment", "workflow-controller"),
        *enforcer.get("rollouts", ()),
    ):
        cluster.kubectl(
            "-n", namespace, "rollout", "status", f"{kind}/{name}", "--timeout=180s", timeout=190
        )
    return {k: v for k, v in enforcer.items() if k != "rollouts"}


def apply(cluster, documents: list[dict], server_side: bool = False) -> None:
    text = yaml.safe_dump_all(documents)
    flags = ["--server-side", "--force-conflicts"] if server_side else []
    cluster.kubectl("apply", *flags, "-f", "-", input=text)


def storage(folder: Path) -> list[dict]:
    docs = [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": name,
                "annotations": {
                    "storageclass.kubernetes.io/is-default-class": str(default).lower()
                },
            },
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate",
            "reclaimPolicy": "Retain",
        }
        for name, default in STORAGE_CLASSES
    ]
    for name, klass, mode, size, uid in VOLUMES:
        path = folder / name
        path.mkdir(parents=True, exist_ok=True)
        shutil.chown(path, uid, uid)
        path.chmod(0o770)
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name},
                "spec": {
                    "storageClassName": klass,
                    "accessModes": [mode],
                    "capacity": {"storage": size},
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": str(path), "type": "Directory"},
                },
            }
        )
    return docs


COREFILE = """.:53 {
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
}
"""


def coredns() -> list[dict]:
    """CoreDNS as kubeadm deploys it, one replica, non-root (port 53 through the Pod's
    ip_unprivileged_port_start, a safe sysctl, rather than a capability)."""
    labels = {"k8s-app": "kube-dns"}
    meta = {"name": "coredns", "namespace": "kube-system"}
    rules = [
        {
            "apiGroups": [""],
            "resources": ["endpoints", "services", "pods", "namespaces"],
            "verbs": ["list", "watch"],
        },
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        },
    ]
    container = {
        "name": "coredns",
        "image": COREDNS_IMAGE,
        "imagePullPolicy": "Never",
        "args": ["-conf", "/etc/coredns/Corefile"],
        "ports": [
            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
        ],
        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}},
        "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod = {
        "serviceAccountName": "coredns",
        "priorityClassName": "system-cluster-critical",
        "dnsPolicy": "Default",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "53"}],
        },
        "containers": [container],
        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", **meta}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": COREFILE}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {**meta, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "selector": labels,
                "clusterIP": node.DNS_IP,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ],
            },
        },
    ]


def argo(cluster, bin_dir: Path) -> list[dict]:
    """Argo's manifests/cluster-install minus argo-server (the install's CRDs, `argo`
    namespace objects, RBAC, the empty workflow-controller-configmap), the controller's image
    pinned as the release's install.yaml pins it; one replica, so no leader election."""
    out = cluster.kubectl("kustomize", str(_argo_manifests() / "cluster-install"))
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "argo"}}]
    for doc in yaml.safe_load_all(out):
        if not doc or "argo-server" in doc["metadata"]["name"]:
            continue
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "workflow-controller":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            container["image"] = CONTROLLER_IMAGE
            container["env"].append({"name": "LEADER_ELECTION_DISABLE", "value": "true"})
            # How long the controller waits after a Pod's change before it moves the workflow
            # on (Argo's default 10 s; its own test setup uses 1 s): the scenarios' steps are
            # short, so most of a cached run would be this wait. Timing only: nothing the
            # overlay does depends on it.
            container["env"].append({"name": "DEFAULT_REQUEUE_TIME", "value": REQUEUE_TIME})
        docs.append(doc)
    return docs


def _argo_manifests() -> Path:
    return _module_dir(f"github.com/argoproj/argo-workflows/v3@{ARGO_VERSION}") / "manifests"


def _module_dir(module: str) -> Path:
    gomodcache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True
    ).stdout.strip()
    path = Path(gomodcache) / module
    if not path.is_dir():
        subprocess.run(["go", "mod", "download", module], capture_output=True, check=True)
    return path


def module_file(module: str, name: str) -> str:
    return (_module_dir(module) / name).read_text()
