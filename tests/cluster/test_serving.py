"""Scenario d of issue 24 on the real cluster: after the first run's push the serving
Deployment becomes Ready (`dae serve`, TF Serving's drop-in, in its place: no TF Serving image
here), and a client Pod in the namespace gets a gRPC and a REST predict through the Service
with dae's own clients (dae/serving/apis/client.py); a pipeline Pod, whose egress the policies
keep to DNS and its peers, does not get through."""

from __future__ import annotations

import uuid

import pytest
import workloads
import yaml
from workloads import NAMESPACE

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

IMAGE = "docker.io/library/dae:0.1.0"
# One noisy-looking 28x28 digit through each API; prints the denoised shape per API.
PREDICT = """
import numpy as np
from dae.serving.apis.client import connect
images = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
for api, server in (("grpc", "dae-serving:8500"), ("rest", "dae-serving:8501")):
    client = connect(server, "denoiser", rest=api == "rest")
    out = client.predict(images)
    client.close()
    print(api, out.shape, bool(np.isfinite(out).all()))
"""
# Tries both ports once a second, at most 30 times, until both give GOAL (the enforcer
# programs a new Pod's rules a moment after it starts: its first tries may pass); prints the
# last outcome per port.
PROBE = """
import socket, time
for attempt in range(30):
    outcomes = []
    for port in (8500, 8501):
        try:
            socket.create_connection(("dae-serving", port), timeout=3).close()
            outcomes.append(f"{port} through")
        except OSError as err:
            outcomes.append(f"{port} kept out: {type(err).__name__}")
    if all("GOAL" in o for o in outcomes):
        break
    time.sleep(1)
print("\\n".join(outcomes))
"""


def client_pod(name: str, script: str, labels: dict) -> dict:
    """A Pod from the dae image, hardened as the namespace's "restricted" requires."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "client",
                    "image": IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", script],
                    "env": [{"name": "TF_CPP_MIN_LOG_LEVEL", "value": "3"}],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def run_pod(cluster, script: str, labels: dict, timeout: int = 300) -> str:
    """Run the client Pod to its end; its output (a failed Pod fails with diagnostics)."""
    name = f"client-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(client_pod(name, script, labels)))
    try:

        def ended():
            phase = workloads.get(cluster, NAMESPACE, "pod", name)["status"].get("phase")
            return phase if phase in ("Succeeded", "Failed") else None

        phase = workloads.wait_for(cluster, f"pod {name}", ended, timeout, NAMESPACE)
        log = workloads.logs(cluster, NAMESPACE, name, tail=50)
        assert phase == "Succeeded", log
        return log
    finally:
        cluster.kubectl("-n", NAMESPACE, "delete", "pod", name, "--wait=false")


@pytest.fixture(scope="module")
def serving(cluster):
    """The first run has pushed; the serving Deployment rolled out."""
    workloads.first_run(cluster)
    workloads.rollout(cluster, NAMESPACE, "deployment/dae-serving", timeout=300)


def test_serving_becomes_ready_and_answers_grpc_and_rest(cluster, serving):
    log = run_pod(cluster, PREDICT, {"app.kubernetes.io/name": "dae-client"})
    assert log.splitlines()[-2:] == ["grpc (2, 28, 28, 1) True", "rest (2, 28, 28, 1) True"]


def test_a_pod_the_policies_do_not_allow_is_kept_out(cluster, serving, enforcer):
    """A pipeline Pod (its egress is DNS and its peers') does not reach serving, while the
    client above does (so the Service answers; the policy is what keeps this one out)."""
    allowed = run_pod(
        cluster, PROBE.replace("GOAL", "through"), {"app.kubernetes.io/name": "dae-client"}
    )
    assert allowed.splitlines()[-2:] == ["8500 through", "8501 through"]
    kept_out = run_pod(
        cluster, PROBE.replace("GOAL", "kept out"), {"app.kubernetes.io/name": "dae"}
    )
    ports = [line.split(" kept out:")[0] for line in kept_out.splitlines()[-2:]]
    assert ports == ["8500", "8501"], kept_out
