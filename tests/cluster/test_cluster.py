"""The test cluster's own smoke: the node is Ready, a Pod runs from a local image as uid 10001
with a read-only root filesystem in a namespace enforcing Pod Security "restricted", cluster
DNS answers, and a NetworkPolicy holds (one client let through, another refused)."""

from __future__ import annotations

import json
import uuid

import pytest
import yaml
from cluster import ClusterError

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# The python:3.11-slim-bookworm stand-in built here (tests/cluster/images.py): a shell and
# Python, no network tools.
IMAGE = "docker.io/library/python:3.11-slim-bookworm"
RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


@pytest.fixture
def namespace(cluster):
    """A fresh namespace enforcing Pod Security "restricted", deleted afterwards."""
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    apply(
        cluster,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}},
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def apply(cluster, *docs: dict) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def pod(name: str, script: str, labels: dict | None = None, restart: str = "Never") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {
            "restartPolicy": restart,
            "securityContext": RESTRICTED,
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", script],
                    "securityContext": CONTAINER_SECURITY,
                }
            ],
        },
    }


def run_to_end(cluster, namespace: str, manifest: dict) -> str:
    """Create the Pod, wait until it has finished, return its log (a failed Pod fails here)."""
    name = manifest["metadata"]["name"]
    apply(cluster, {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}})
    cluster.kubectl(
        "-n",
        namespace,
        "wait",
        f"pod/{name}",
        "--timeout=180s",
        "--for=jsonpath={.status.phase}=Succeeded",
        timeout=190,
    )
    return cluster.kubectl("-n", namespace, "logs", name)


def test_node_is_ready(cluster):
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json"))["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["dae-node"]
    conditions = {c["type"]: c["status"] for c in nodes[0]["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    assert nodes[0]["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.4"
    assert nodes[0]["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


def test_pod_runs_as_10001_on_a_read_only_root(cluster, namespace):
    script = (
        "import os\n"
        "print('uid', os.getuid())\n"
        "try:\n"
        "    open('/probe', 'w')\n"
        "except OSError as err:\n"
        "    print('write /:', err.strerror)\n"
    )
    log = run_to_end(cluster, namespace, pod("whoami", script))
    assert log.splitlines() == ["uid 10001", "write /: Read-only file system"]


def test_restricted_namespace_refuses_a_root_pod(cluster, namespace):
    """Pod Security admission is on: the same Pod as root is refused at the API."""
    manifest = pod("root", "print(1)")
    manifest["spec"]["securityContext"] = {**RESTRICTED, "runAsNonRoot": False, "runAsUser": 0}
    manifest["metadata"]["namespace"] = namespace
    with pytest.raises(ClusterError, match="violates PodSecurity"):
        apply(cluster, manifest)


def test_cluster_dns_resolves_the_api_service(cluster, namespace):
    script = "import socket; print(socket.gethostbyname('kubernetes.default'))"
    assert run_to_end(cluster, namespace, pod("dns", script)).strip() == "10.96.0.1"


def client(attempts: int) -> str:
    """Tries web:8080 until it gets through, at most `attempts` times a second apart; prints
    each outcome. The enforcer programs a new Pod's address a moment after it starts."""
    return f"""
import time, urllib.request
for attempt in range({attempts}):
    try:
        urllib.request.urlopen('http://web:8080/', timeout=3).read()
        print('through')
        break
    except OSError:
        print('refused')
        time.sleep(1)
"""


def test_network_policy_lets_only_the_selected_client_in(cluster, namespace, enforcer):
    server = pod(
        "web",
        "import http.server as h; h.HTTPServer(('', 8080), "
        "h.SimpleHTTPRequestHandler).serve_forever()",
        restart="Always",
    )
    server["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": 8080}}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080}]},
    }
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "web-from-friends"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "friend"}}}]}],
        },
    }
    for doc in (server, service, policy):
        doc["metadata"]["namespace"] = namespace
    apply(cluster, server, service, policy)
    cluster.kubectl(
        "-n", namespace, "wait", "pod/web", "--for=condition=Ready", "--timeout=180s", timeout=190
    )
    # The friend gets through once the enforcer has its address (so the policy is programmed
    # by then); the stranger, started after, is refused every time.
    friend = run_to_end(cluster, namespace, pod("friend", client(60), {"role": "friend"}))
    assert friend.split()[-1] == "through"
    stranger = run_to_end(cluster, namespace, pod("stranger", client(5), {"role": "stranger"}))
    assert stranger.split() == ["refused"] * 5
