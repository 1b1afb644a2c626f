"""Scenarios a and b of issue 24 on the real cluster: the prod overlay is accepted whole by the
API server (its documented storage classes, the test's image, the Flink operator's and
KServe's CRDs present), so is the KServe opt-in; every Pod is admitted in namespace `dae`
under Pod Security "restricted", Argo's init/wait containers included, with Argo's ConfigMap
as its install left it; and the first apply's run starts at once (it carries its template's
spec), its api-check step reaching the API server through the shipped NetworkPolicies."""

from __future__ import annotations

import json

import addons
import pytest
import workloads
import yaml
from workloads import NAMESPACE, OVERLAY

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def applied(cluster) -> list[dict]:
    """The running overlay applied in `dae` (once per session) and the operators' CRDs."""
    cluster.kubectl(
        "apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(workloads.operator_crds())
    )
    crds = [d["metadata"]["name"] for d in workloads.operator_crds()]

    def established():
        for name in crds:
            crd = json.loads(cluster.kubectl("get", "crd", name, "-o", "json"))
            conditions = {
                c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []
            }
            if conditions.get("Established") != "True":
                return False
        return True

    workloads.wait_for(cluster, "the operators' CRDs established", established, 60, NAMESPACE)
    return workloads.deployed(cluster)


def names(docs: list[dict]) -> set[str]:
    """What `kubectl apply -o name` prints of each object: kind[.group]/name."""
    out = set()
    for d in docs:
        group = d["apiVersion"].rpartition("/")[0]
        kind = d["kind"].lower() + (f".{group}" if group else "")
        out.add(f"{kind}/{d['metadata']['name']}")
    return out


@pytest.mark.parametrize("variant", ["test", "kserve"])
def test_the_prod_overlay_and_the_kserve_opt_in_are_accepted_whole(cluster, applied, variant):
    """`kubectl apply --server-side -k` as a user runs it, every object validated and admitted
    by the API server (dry run: the Flink session and KServe's predictor need operators)."""
    # --force-conflicts: the running variant is applied already, and Argo's controller owns the
    # first run's spec once it has started; the dry run is about validation and admission.
    out = cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--dry-run=server", "-o", "name",
        "-k", str(OVERLAY / variant),
    )  # fmt: skip
    expected = names(workloads.render(cluster, NAMESPACE, variant, adapt=False))
    assert set(out.split()) == expected
    kinds = {n.split("/")[0] for n in expected}
    assert {"flinkdeployment.flink.apache.org", "workflowtemplate.argoproj.io"} <= kinds
    assert ("inferenceservice.serving.kserve.io" in kinds) is (variant == "kserve")


def test_every_pod_is_admitted_under_restricted_with_argos_containers(cluster, applied):
    """The namespace enforces "restricted"; the first run's Pods carry Argo's init and wait
    containers and were admitted as they are (a refused Pod would leave an event saying
    'violates PodSecurity' and its step in Error)."""
    namespace = json.loads(cluster.kubectl("get", "namespace", NAMESPACE, "-o", "json"))
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"

    def argo_pod():
        for pod in workloads.pods(cluster, NAMESPACE, "workflows.argoproj.io/workflow"):
            spec = pod["spec"]
            if {"init"} <= {c["name"] for c in spec.get("initContainers", [])}:
                return pod
        return None

    pod = workloads.wait_for(cluster, "a workflow Pod", argo_pod, 300, NAMESPACE)
    spec = pod["spec"]
    assert {c["name"] for c in spec["containers"]} >= {"wait", "main"}
    for container in spec["initContainers"] + spec["containers"]:
        security = container.get("securityContext", {})
        assert security.get("allowPrivilegeEscalation") is False, container["name"]
        assert security.get("capabilities", {}).get("drop") == ["ALL"], container["name"]
    events = cluster.kubectl("-n", NAMESPACE, "get", "events", "-o", "json")
    refusals = [
        e["message"] for e in json.loads(events)["items"] if "PodSecurity" in e.get("message", "")
    ]
    assert refusals == []


def test_argos_configmap_is_what_its_install_gave(cluster, applied):
    """Nothing in the overlay patches Argo's controller ConfigMap (defect 3): the cluster's is
    the cluster-install's, and the overlay has no object outside its namespace."""
    installed = next(
        d
        for d in addons.argo(cluster, cluster.bin)
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "workflow-controller-configmap"
    )
    live = json.loads(
        cluster.kubectl(
            "-n", "argo", "get", "configmap", "workflow-controller-configmap", "-o", "json"
        )
    )
    assert live.get("data") == installed.get("data")
    for variant in ("test", "kserve"):
        docs = workloads.render(cluster, NAMESPACE, variant, adapt=False)
        assert {d["metadata"].get("namespace", NAMESPACE) for d in docs} == {NAMESPACE}
        assert {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"} == {NAMESPACE}


def first_run_started(cluster):
    """The first run's api-check node once it has finished (its message if it failed)."""
    wf = workloads.get(cluster, NAMESPACE, "workflow", workloads.FIRST_RUN)
    status = wf.get("status", {})
    if status.get("phase") in workloads.FINAL_PHASES and status.get("phase") != "Succeeded":
        return wf
    for node in workloads.workflow_nodes(wf):
        if node.get("displayName") == "api-check" and node.get("phase") in ("Succeeded", "Failed"):
            return wf
    return None


def test_the_first_apply_starts_a_first_run(cluster, applied):
    """Defect 1: the first run needs no WorkflowTemplate in the controller's informer; it
    starts, and its first step (api-check) succeeds."""
    wf = workloads.wait_for(
        cluster, "the first run's api-check", lambda: first_run_started(cluster), 600, NAMESPACE
    )
    status = wf["status"]
    assert "not found" not in status.get("message", "")
    (check,) = [n for n in workloads.workflow_nodes(wf) if n.get("displayName") == "api-check"]
    assert check["phase"] == "Succeeded", workloads.diagnostics(cluster, NAMESPACE, "dae-first-run")


def test_the_api_check_reaches_the_api_server_through_enforced_policies(cluster, applied, enforcer):
    """Defect 2: with the NetworkPolicies enforced (the namespace's default deny included),
    the executor's and api-check's traffic to the API server passes the policy as shipped
    (no address to fill in)."""
    policies = {d["metadata"]["name"] for d in applied if d["kind"] == "NetworkPolicy"}
    assert "dae-workflow-egress-apiserver" in policies
    wf = workloads.wait_for(
        cluster, "the first run's api-check", lambda: first_run_started(cluster), 600, NAMESPACE
    )
    (check,) = [n for n in workloads.workflow_nodes(wf) if n.get("displayName") == "api-check"]
    assert check["phase"] == "Succeeded", workloads.diagnostics(cluster, NAMESPACE, "dae-first-run")
