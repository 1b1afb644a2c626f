"""Scenarios c and g of issue 24 on the real cluster: the retraining DAG end to end in real
containers on the smoke config (the first apply's run: tuning chief and workers, training as an
Indexed Job the resource step creates and the Job controller completes, evaluate, push,
report, finish), with the PSNR `dae run --profile smoke` gets; resubmissions schedule no tuner
or trainer Pod; two at once on one root take turns on the mutex; the CronWorkflow, on a
one-minute schedule, creates a Workflow."""

from __future__ import annotations

import json
import time

import pytest
import workloads
from workloads import FIRST_RUN, NAMESPACE

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

SCALED_OUT = {"tune-chief", "tune-worker", "train"}
RUN_TIMEOUT = 900  # s: an all-cached run's dozen Pods, one after another


def pod_nodes(wf: dict) -> dict[str, list[dict]]:
    """The workflow's Pod nodes (each attempt of a step, retries' parents aside) by template."""
    out: dict[str, list[dict]] = {}
    for node in workloads.workflow_nodes(wf):
        if node["type"] == "Pod":
            out.setdefault(node.get("templateName", ""), []).append(node)
    return out


def metrics(cluster, run: str) -> dict:
    """The run's metrics.json on the shared volume (a hostPath on this machine)."""
    root = cluster.run / "volumes" / "dae-root"
    return json.loads((root / "runs" / run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def first_run(cluster):
    """The first apply's run, watched to its end: the workflow and the training Jobs seen
    while it ran (their Pods go once they succeed: podGC OnPodSuccess)."""
    workloads.deployed(cluster)
    jobs: dict[str, dict] = {}

    def done():
        for job in workloads.items(
            cluster, NAMESPACE, "jobs", f"workflows.argoproj.io/workflow={FIRST_RUN}"
        ):
            jobs[job["metadata"]["name"]] = job
        wf = workloads.get(cluster, NAMESPACE, "workflow", FIRST_RUN)
        phase = wf.get("status", {}).get("phase")
        if phase in workloads.FINAL_PHASES:
            assert phase == "Succeeded", workloads.diagnostics(cluster, NAMESPACE, FIRST_RUN)
            return wf
        return None

    started = time.monotonic()
    wf = workloads.wait_for(
        cluster, "the first run", done, workloads.FIRST_RUN_TIMEOUT, NAMESPACE, FIRST_RUN
    )
    print(f"first run: {time.monotonic() - started:.0f} s waited")
    return wf, jobs


def test_the_retraining_dag_runs_end_to_end_in_containers(cluster, first_run, smoke_root):
    wf, jobs = first_run
    by_template = pod_nodes(wf)
    for step in ("api-check", "ingest", "validate", "transform", "evaluate", "push", "report"):
        assert [n["phase"] for n in by_template[step]] == ["Succeeded"], step
    # The exit handler's finish, not record-failure.
    assert [n["phase"] for n in by_template["finish"]] == ["Succeeded"]
    assert "record-failure" not in by_template
    # Keras Tuner: a chief and two workers, as Pods.
    chief, workers = by_template["tune-chief"], by_template["tune-worker"]
    assert [n["phase"] for n in chief] == ["Succeeded"]
    assert [n["phase"] for n in workers] == ["Succeeded"] * 2
    # Training: the resource step created an Indexed Job of two workers, which the Job
    # controller completed (the step's successCondition is the Job's completionTime).
    (train,) = by_template["train"]
    assert train["phase"] == "Succeeded"  # Argo runs a `resource` template in a Pod
    (job,) = jobs.values()
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    final = workloads.get(cluster, NAMESPACE, "job", job["metadata"]["name"])
    assert final["status"]["succeeded"] == 2 and final["status"].get("completionTime")
    assert final["metadata"]["ownerReferences"][0]["name"] == FIRST_RUN
    # Each worker's watcher sidecar exits when the kubelet stops it after the worker is done
    # (a PID 1 ignoring SIGTERM is killed after the grace period: 137, the Job held 60 s).
    selector = f"batch.kubernetes.io/job-name={job['metadata']['name']}"
    for pod in workloads.pods(cluster, NAMESPACE, selector):
        (watcher,) = pod["status"]["initContainerStatuses"]
        assert watcher["state"]["terminated"]["exitCode"] == 0, watcher

    mine, smoke = (
        metrics(cluster, FIRST_RUN),
        json.loads((smoke_root[1] / "metrics.json").read_text()),
    )
    keys = ("blessed", "pushed_version", "psnr_noisy", "psnr_denoised")
    print(f"cluster: {[mine[k] for k in keys]}\ndae run: {[smoke[k] for k in keys]}")
    assert mine["status"] == "succeeded" and mine["train_workers"] == 2
    assert mine["blessed"] is smoke["blessed"] is True
    assert mine["pushed_version"] == smoke["pushed_version"] == 1
    assert mine["psnr_noisy"] == pytest.approx(smoke["psnr_noisy"], abs=1e-6)
    assert mine["psnr_denoised"] == pytest.approx(smoke["psnr_denoised"], abs=0.1)


CRON = "dae-retrain"
CRON_SELECTOR = f"workflows.argoproj.io/cron-workflow={CRON}"


def patch_cron(cluster, spec: dict) -> None:
    body = json.dumps({"spec": spec})
    cluster.kubectl("-n", NAMESPACE, "patch", "cronworkflow", CRON, "--type=merge", "-p", body)


@pytest.fixture(scope="module")
def two_at_once(cluster, first_run):
    """Two runs on the first run's root at once: one submitted from the template, and the
    one the CronWorkflow creates once patched to every minute (suspended again as soon as it
    has). Returns (names in order of creation, seconds from the patch to the cron's
    Workflow, each one's (phase, waiting-on-the-mutex) as seen while they ran, the finished
    workflows)."""
    before = {w["metadata"]["name"] for w in workloads.items(cluster, NAMESPACE, "workflows")}
    submitted = workloads.submit(cluster)
    patched = time.monotonic()
    patch_cron(cluster, {"schedules": ["* * * * *"], "suspend": False})
    names = [submitted]
    seen: dict[str, list[tuple[str, str]]] = {}
    finished: dict[str, dict] = {}
    cron_after = None

    def done():
        nonlocal cron_after
        if cron_after is None:
            created = [
                w["metadata"]["name"]
                for w in workloads.items(cluster, NAMESPACE, "workflows", CRON_SELECTOR)
                if w["metadata"]["name"] not in before
            ]
            if created:
                cron_after = time.monotonic() - patched
                patch_cron(cluster, {"suspend": True})
                names.extend(created)
            elif time.monotonic() - patched > 90:
                raise workloads.WorkloadError("the CronWorkflow created no Workflow in 90 s")
        for name in names:
            if name in finished:
                continue
            status = workloads.get(cluster, NAMESPACE, "workflow", name).get("status", {})
            waiting = status.get("synchronization", {}).get("mutex", {}).get("waiting") or (
                "lock" in status.get("message", "")  # "Waiting for dae/Mutex/dae-root lock..."
            )
            seen.setdefault(name, []).append(
                (status.get("phase", ""), "waiting" if waiting else "")
            )
            if status.get("phase") in workloads.FINAL_PHASES:
                finished[name] = workloads.get(cluster, NAMESPACE, "workflow", name)
        return cron_after is not None and len(finished) == len(names)

    try:
        workloads.wait_for(cluster, "two runs", done, 2 * RUN_TIMEOUT, NAMESPACE, submitted)
    finally:
        patch_cron(cluster, {"suspend": True})
    return names, cron_after, seen, finished


def test_a_resubmission_schedules_no_tuner_or_trainer(cluster, two_at_once):
    names, _, _, finished = two_at_once
    for name in names:
        wf = finished[name]
        assert wf["status"]["phase"] == "Succeeded", workloads.diagnostics(cluster, NAMESPACE, name)
        ran = set(pod_nodes(wf))
        assert not ran & SCALED_OUT, ran
        jobs = workloads.items(cluster, NAMESPACE, "jobs", f"workflows.argoproj.io/workflow={name}")
        assert jobs == []
        got = metrics(cluster, name)
        assert got["status"] == "succeeded" and got["pushed_version"] == 1
        assert {"ingest", "validate", "transform", "tune", "train"} <= set(got["cached_stages"])


def test_two_runs_on_one_root_take_turns_on_the_mutex(two_at_once):
    """The later one waits for the earlier one's lock on dae-root, then runs (all cached)."""
    names, _, seen, finished = two_at_once
    first, second = names
    assert not any(mark for _, mark in seen[first]), seen
    assert ("Pending", "waiting") in seen[second], seen
    steps = [n for nodes in pod_nodes(finished[second]).values() for n in nodes]
    assert min(n["startedAt"] for n in steps) >= finished[first]["status"]["finishedAt"]
    assert {wf["status"]["phase"] for wf in finished.values()} == {"Succeeded"}


def test_the_cron_workflow_on_a_one_minute_schedule_creates_a_workflow(two_at_once):
    names, cron_after, _, _ = two_at_once
    assert len(names) == 2 and cron_after <= 90
    print(f"the CronWorkflow's run {names[1]} appeared {cron_after:.0f} s after the patch")
