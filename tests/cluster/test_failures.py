"""Scenarios e and f of issue 24 on the real cluster, in a namespace of their own: failures
(validation exiting 1 is not retried and the exit handler records the run failed; a container
killed mid-step is retried; a step failing after longer than the old backoff.maxDuration is
retried, each attempt with the step's own deadline) and stopping (a terminated workflow, and
one past its deadline, leave no training Job or Pod behind: defects 4 and 5).

Each workflow is the overlay's WorkflowTemplate spec, submitted inline with the few changes a
scenario needs at test scale (a config, a step's command, durations in seconds); retries,
deadlines, exit handler, Job manifest and its watcher stay as shipped."""

from __future__ import annotations

import copy
import json
import secrets
import time

import pytest
import workloads
import yaml
from cluster import ClusterError

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

NAMESPACE = "dae-failures"
# What these scenarios run: no first run, CronWorkflow or serving (they would take the cores).
SKIPPED_KINDS = {
    *("Namespace", "Workflow", "CronWorkflow"),
    *("Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"),
}
BACKOFF = "1s"  # every retry's first backoff, shortened from 30 s
STOP_BOUND = 60  # s: the training Job and its Pods are gone this long after the stop
TRAINER = 'exec dae stage train --run "$RUN_ID" --root /data/dae-root'
# The trainer's stand-in for f (no tuned run to train on): it runs until stopped and, as
# `dae` does (dae/cli.py), ends on SIGTERM.
STAND_IN = (
    "exec python -c 'import signal, sys, time; "
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); time.sleep(3600)'"
)


@pytest.fixture(scope="module")
def namespace(cluster):
    """The overlay's objects these scenarios need (workflow, database, policies), applied
    once; yields the WorkflowTemplate's spec, which every scenario submits a copy of."""
    docs = workloads.render(cluster, NAMESPACE)
    workloads.apply(cluster, [d for d in docs if d["kind"] == "Namespace"])
    try:
        cluster.kubectl("-n", NAMESPACE, "get", "secret", "dae-metadata")
    except ClusterError:  # absent: created once (the database keeps its first password)
        workloads.apply(cluster, [workloads.metadata_secret(NAMESPACE)])
    kept = [d for d in docs if d["kind"] not in SKIPPED_KINDS]
    workloads.apply(cluster, workloads.claim_volumes(cluster, NAMESPACE, docs) + kept)
    template = next(d for d in docs if d["kind"] == "WorkflowTemplate")
    workloads.rollout(cluster, NAMESPACE, "statefulset/dae-postgres")
    yield template["spec"]


# -- workflows at test scale -------------------------------------------------------------------
def scaled(spec: dict) -> dict:
    """The template's spec with every retry's backoff in seconds; a maxDuration, were the
    compiler to write one again, shrinks in proportion (10 min against 30 s: 20 s)."""
    spec = copy.deepcopy(spec)
    for template in spec["templates"]:
        backoff = template.get("retryStrategy", {}).get("backoff")
        if backoff:
            backoff["duration"] = BACKOFF
            if "maxDuration" in backoff:
                backoff["maxDuration"] = "20s"
    return spec


def template(spec: dict, name: str) -> dict:
    return next(t for t in spec["templates"] if t["name"] == name)


def submit(cluster, spec: dict, prefix: str) -> str:
    return workloads.create_workflow(cluster, spec, NAMESPACE, prefix)


def attempts(wf: dict, template_name: str) -> list[dict]:
    """The step's Pod nodes (one per attempt), oldest first."""
    nodes = [
        n
        for n in workloads.workflow_nodes(wf)
        if n["type"] == "Pod" and n.get("templateName") == template_name
    ]
    return sorted(nodes, key=lambda n: n.get("startedAt") or "")


def running_pod(cluster, workflow: str, component: str):
    """The workflow's Pod of `component` once its main container runs and the controller
    has seen it run (a Pod deleted while its node is still Pending is only created again,
    operator.go: no attempt failed), or None."""
    wf = workloads.get(cluster, NAMESPACE, "workflow", workflow)
    if wf.get("status", {}).get("phase") in workloads.FINAL_PHASES:
        raise workloads.WorkloadError(f"{workflow} ended before its {component} step was seen")
    if not any(n["phase"] == "Running" for n in attempts(wf, component)):
        return None
    selector = f"workflows.argoproj.io/workflow={workflow},app.kubernetes.io/component={component}"
    for pod in workloads.pods(cluster, NAMESPACE, selector):
        for status in pod["status"].get("containerStatuses", []):
            if status["name"] == "main" and "running" in status.get("state", {}):
                return pod
    return None


def final(cluster, name: str, phase: str, timeout: float = 600) -> dict:
    return workloads.wait_for_phase(cluster, name, NAMESPACE, (phase,), timeout=timeout)


# -- e: failures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def invalid_run(cluster, namespace):
    """A run whose data fails validation (an expected mean no MNIST has), its ingest
    container killed (SIGKILL, as the OOM killer or a node's runtime kills) while ingest runs
    (not a cache hit): the workflow once it has ended, and the killed Pod's name. Deleting
    the Pod instead is not deterministic: Argo v3.7 creates a Pod it finds gone again under
    the same attempt, or fails the attempt, depending on which event it sees first."""
    config = yaml.safe_load(
        workloads.get(cluster, NAMESPACE, "configmap", "dae-workflow-config")["data"]["config.yaml"]
    )
    config["validate"].update(expected_mean=0.9, mean_tolerance=0.01)
    # A data size no earlier run ingested: ingest's cache key is new, so it really runs; the
    # whole training split, so it runs long enough to be killed mid-step (the smoke size's
    # ingest could end between the poll that saw it run and the kill).
    config["data"].update(max_train_examples=None, max_test_examples=150 + secrets.randbelow(100))
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "dae-config-invalid", "namespace": NAMESPACE},
        "data": {"config.yaml": yaml.safe_dump(config)},
    }
    workloads.apply(cluster, [configmap])
    spec = scaled(namespace)
    next(v for v in spec["volumes"] if v["name"] == "config")["configMap"]["name"] = (
        "dae-config-invalid"
    )
    name = submit(cluster, spec, "dae-invalid-")
    pod = workloads.wait_for(
        cluster,
        "ingest running",
        lambda: running_pod(cluster, name, "ingest"),
        600,
        NAMESPACE,
        name,
    )
    (main,) = [c for c in pod["status"]["containerStatuses"] if c["name"] == "main"]
    cluster.ctr("tasks", "kill", "-s", "SIGKILL", main["containerID"].split("://")[-1])
    return final(cluster, name, "Failed"), pod["metadata"]["name"]


def test_a_container_killed_mid_step_is_retried(invalid_run):
    wf, killed = invalid_run
    ingest = attempts(wf, "ingest")
    assert [n["phase"] for n in ingest[-1:]] == ["Succeeded"], ingest
    assert len(ingest) == 2, [(n["phase"], n.get("message")) for n in ingest]
    assert ingest[0]["phase"] in ("Error", "Failed"), ingest[0]
    assert "exit code 137" in ingest[0].get("message", ""), (killed, ingest[0])


def test_validation_exit_1_is_not_retried_and_the_run_is_recorded_failed(
    cluster, namespace, invalid_run
):
    wf, _ = invalid_run
    (validate,) = attempts(wf, "validate")  # one attempt: exit 1 is not retried
    assert validate["phase"] == "Failed"
    assert "exit code 1" in validate.get("message", ""), validate
    (record,) = attempts(wf, "record-failure")
    assert record["phase"] == "Succeeded"
    # `dae runs list` in a Pod of the workflow's own kind (its policies reach the database).
    spec = copy.deepcopy(namespace)
    lister = copy.deepcopy(template(spec, "record-failure"))
    lister["container"]["args"] = ["runs", "list", "--root", "/data/dae-root"]
    lister.pop("retryStrategy")
    spec.update(templates=[{**lister, "name": "runs-list"}], entrypoint="runs-list")
    spec.pop("onExit")
    spec.pop("podGC")  # its Pod stays to be read; deleted with the workflow
    lister_run = submit(cluster, spec, "dae-runs-list-")
    final(cluster, lister_run, "Succeeded", 300)
    (pod,) = workloads.pods(cluster, NAMESPACE, f"workflows.argoproj.io/workflow={lister_run}")
    listing = workloads.logs(cluster, NAMESPACE, pod["metadata"]["name"], "main", tail=1000)
    cluster.kubectl("-n", NAMESPACE, "delete", "workflow", lister_run, "--wait=false")
    rows = {line.split()[0]: line.split() for line in listing.splitlines() if line.strip()}
    assert rows[wf["metadata"]["name"]][2] == "failed", listing  # run, started, status


FLAKY = """
import os, sys, time
marker = "/data/dae-root/" + os.environ["WORKFLOW"] + ".failed-once"
if not os.path.exists(marker):
    open(marker, "w").close()
    time.sleep(int(os.environ["SLEEP"]))
    sys.exit(3)
"""


def test_a_step_failing_after_the_old_max_duration_is_retried_with_its_own_deadline(
    cluster, namespace
):
    """validate's template (retries, expression, Pod settings) running a command that fails
    once after 30 s, longer than the old maxDuration at this scale (20 s); its deadline
    shortened to 60 s. Each attempt's Pod carries the step's whole deadline."""
    spec = scaled(namespace)
    step = template(spec, "validate")
    step["activeDeadlineSeconds"] = "60"
    step["container"].update(command=["python", "-c", FLAKY], args=[])
    step["container"]["env"] += [
        {"name": "WORKFLOW", "value": "{{workflow.name}}"},
        {"name": "SLEEP", "value": "30"},
    ]
    spec.update(entrypoint="validate", podGC={"strategy": "OnWorkflowCompletion"})
    name = submit(cluster, spec, "dae-flaky-")
    wf = final(cluster, name, "Succeeded", 400)
    first, second = attempts(wf, "validate")
    assert first["phase"] == "Failed" and "exit code 3" in first.get("message", "")
    assert second["phase"] == "Succeeded"
    deadlines = [
        pod["spec"].get("activeDeadlineSeconds")
        for pod in workloads.pods(cluster, NAMESPACE, f"workflows.argoproj.io/workflow={name}")
    ]
    assert deadlines == [60, 60]


# -- f: stopping -------------------------------------------------------------------------------
def training(cluster, namespace: dict, prefix: str) -> tuple[str, str]:
    """A workflow whose entry is the train step (its Job as shipped, the trainer a stand-in),
    once the Job's workers run: the workflow's and the Job's names."""
    spec = scaled(namespace)
    resource = template(spec, "train")["resource"]
    assert TRAINER in resource["manifest"], "the Job's trainer command changed"
    resource["manifest"] = resource["manifest"].replace(TRAINER, STAND_IN)
    spec.update(entrypoint="train")
    name = submit(cluster, spec, prefix)

    def workers_running():
        jobs = workloads.items(cluster, NAMESPACE, "jobs", f"workflows.argoproj.io/workflow={name}")
        if not jobs:
            return None
        job = jobs[0]["metadata"]["name"]
        pods = workloads.pods(cluster, NAMESPACE, f"batch.kubernetes.io/job-name={job}")
        running = [
            p
            for p in pods
            for s in p["status"].get("containerStatuses", [])
            if s["name"] == "dae" and "running" in s.get("state", {})
        ]
        workers = int(spec["arguments"]["parameters"][1]["value"])
        return job if len(running) == workers else None

    job = workloads.wait_for(cluster, "the Job's workers running", workers_running, 600, NAMESPACE)
    return name, job


def assert_gone_within_bound(cluster, workflow: str, job: str) -> float:
    """Seconds until neither the Job nor any of its Pods exists (fails past STOP_BOUND)."""
    stopped = time.monotonic()

    def gone():
        left = workloads.items(
            cluster, NAMESPACE, "jobs", f"workflows.argoproj.io/workflow={workflow}"
        ) + workloads.pods(cluster, NAMESPACE, f"batch.kubernetes.io/job-name={job}")
        return not left

    workloads.wait_for(cluster, f"Job {job} and its Pods gone", gone, STOP_BOUND, NAMESPACE)
    took = time.monotonic() - stopped
    print(f"Job {job} and its Pods gone {took:.0f} s after the stop")
    return took


def patch(cluster, workflow: str, spec: dict) -> None:
    cluster.kubectl(
        "-n", NAMESPACE, "patch", "workflow", workflow, "--type=merge", "-p", json.dumps(spec)
    )


def test_terminating_a_workflow_removes_its_training_job(cluster, namespace):
    name, job = training(cluster, namespace, "dae-terminated-")
    patch(cluster, name, {"spec": {"shutdown": "Terminate"}})  # as `argo terminate` does
    assert_gone_within_bound(cluster, name, job)
    final(cluster, name, "Failed", 120)


def test_a_workflow_past_its_deadline_removes_its_training_job(cluster, namespace):
    name, job = training(cluster, namespace, "dae-deadline-")
    patch(cluster, name, {"spec": {"activeDeadlineSeconds": 1}})
    assert_gone_within_bound(cluster, name, job)
    final(cluster, name, "Failed", 300)
