"""The compiled workflow against what Argo v3.7.18's controller does with it (issue 24's
defects 3-6): the Pods it builds (init and wait containers, podSpecPatch), its retries
(workflow/controller/operator.go, processNodeRetries), the training Job's lifetime, and the
first step's check of the API server (pipeline/kube_api.py)."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import yaml
from test_argo import LAYOUT, _steps, _tasks, compiled

from dae.pipeline import kube_api
from dae.pipeline.argo_layout import load_layout

T0 = datetime(2026, 1, 1, 3, 0)
MINIMAL_CTR_SC = {  # workflow/common/security_context.go, MinimalCtrSC (resource steps)
    "capabilities": {"drop": ["ALL"]},
    "privileged": False,
    "runAsNonRoot": True,
    "runAsUser": 8737,
    "allowPrivilegeEscalation": False,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _merge(base, patch):
    """Kubernetes' strategic merge of a PodSpec as far as these patches go: maps merge,
    container lists merge by name (a name not there is appended)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in patch.items()}}
    if isinstance(base, list) and patch and all(isinstance(c, dict) and "name" in c for c in patch):
        out = [dict(c) for c in base]
        for c in patch:
            i = next((i for i, o in enumerate(out) if o["name"] == c["name"]), None)
            out.append(c) if i is None else out.__setitem__(i, _merge(out[i], c))
        return out
    return patch


def argo_pod(spec: dict, template: dict) -> dict:
    """The PodSpec v3.7.18 builds for a step (workflowpod.go, createWorkflowPod) with the
    controller's ConfigMap at its defaults (no executor securityContext): `wait` then `main`
    for a container step, `main` (argoexec) alone for a resource step, `init` always; then
    the workflow's podSpecPatch and the template's, in that order."""
    resource = "resource" in template
    executor_sc = MINIMAL_CTR_SC if resource else None

    def executor(name):
        return {"name": name, "image": "argoexec", "securityContext": executor_sc}

    main = executor("main") if resource else {"name": "main", **template["container"]}
    pod = {
        "securityContext": spec["securityContext"],
        "initContainers": [executor("init"), *template.get("initContainers", [])],
        "containers": [main] if resource else [executor("wait"), main],
    }
    for patch in (spec.get("podSpecPatch"), template.get("podSpecPatch")):
        if patch:
            pod = _merge(pod, yaml.safe_load(patch))
    return pod


def restricted_violations(pod: dict) -> list[str]:
    """Pod Security "restricted" (v1.34), the container checks a Pod of ours can fail."""
    out = []
    pod_sc = pod.get("securityContext") or {}
    for c in pod["initContainers"] + pod["containers"]:
        sc, name = c.get("securityContext") or {}, c["name"]
        if "image" not in c:
            out.append(f"{name}: a container the patch added")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation != false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            out.append(f"{name}: capabilities do not drop ALL")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            out.append(f"{name}: runAsNonRoot unset")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile")) or {}
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: no seccompProfile")
    return out


def test_argos_init_and_wait_containers_meet_pod_security_restricted():
    (template,) = [o for o in compiled() if o["kind"] == "WorkflowTemplate"]
    pods = 0
    for t in template["spec"]["templates"]:
        if "container" in t or "resource" in t:
            pod = argo_pod(template["spec"], t)
            assert not restricted_violations(pod), (t["name"], restricted_violations(pod))
            pods += 1
    assert pods >= 12


def retried(strategy: dict, failures: list[tuple[float, float]], now: float) -> bool:
    """Whether v3.7.18 starts another attempt (processNodeRetries): `failures` are the
    attempts' (start, end) in minutes from T0, `now` when the controller looks."""
    backoff, at = strategy.get("backoff", {}), lambda m: T0 + timedelta(minutes=m)
    if len(failures) > int(strategy["limit"]):
        return False
    if backoff.get("maxDuration"):
        deadline = at(failures[0][0]) + _duration(backoff["maxDuration"])
        if at(now) > deadline:
            return False  # "Max duration limit exceeded"
    wait = _duration(backoff["duration"]) * int(backoff.get("factor", 1)) ** (len(failures) - 1)
    if backoff.get("cap"):
        wait = min(wait, _duration(backoff["cap"]))
    if backoff.get("maxDuration") and at(failures[-1][1]) + wait > deadline:
        return False  # "Backoff would exceed max duration limit"
    return at(now) >= at(failures[-1][1]) + wait


def _duration(text: str) -> timedelta:
    units = {"s": "seconds", "m": "minutes", "h": "hours"}
    return timedelta(**{units[text[-1]]: int(text[:-1])})


def test_a_step_failing_after_ten_minutes_is_still_retried_within_its_own_deadline():
    layout = load_layout(LAYOUT)
    steps = _steps(compiled())
    for stage in ("transform", "evaluate", "train", "tune-chief"):
        strategy = steps[stage]["retryStrategy"]
        assert retried(strategy, [(0, 11)], now=12), stage  # a first attempt lost at minute 11
        assert retried(strategy, [(0, 11), (12, 40)], now=42), stage
        assert not retried(strategy, [(0, 1), (2, 3), (5, 6)], now=60), stage  # limit 2
    for name, step in steps.items():
        if "container" in step or "resource" in step:
            assert int(step["activeDeadlineSeconds"]) > 0, name
    assert int(steps["evaluate"]["activeDeadlineSeconds"]) == layout.stage("evaluate").deadline
    assert int(steps["tune-worker"]["activeDeadlineSeconds"]) == layout.stage("tune").deadline


def _job() -> dict:
    manifest = _steps(compiled())["train"]["resource"]["manifest"]
    return yaml.safe_load(manifest.replace("{{", "").replace("}}", ""))


def test_the_training_job_belongs_to_its_workflow_and_is_watched():
    steps = _steps(compiled())
    assert steps["train"]["resource"]["setOwnerReference"] is True
    job = _job()
    assert job["metadata"]["labels"]["workflows.argoproj.io/workflow"] == "workflow.name"
    pod = job["spec"]["template"]["spec"]
    # Argo's controller takes Pods with its workflow label for its own: not on the workers.
    assert "workflows.argoproj.io/workflow" not in job["spec"]["template"]["metadata"]["labels"]
    (watch,) = pod["initContainers"]
    assert watch["restartPolicy"] == "Always"  # a native sidecar: ends with the worker
    assert watch["command"][-2:] == ["watch", "$(JOB_NAME)"]
    assert pod["automountServiceAccountToken"] is False
    assert [m["name"] for m in watch["volumeMounts"]] == ["api-token", "tmp"]
    assert all(m["name"] != "api-token" for m in pod["containers"][0]["volumeMounts"])
    (template,) = [o for o in compiled() if o["kind"] == "WorkflowTemplate"]
    spec = template["spec"]
    assert spec["podGC"] == {"strategy": "OnPodSuccess"}
    ttl = spec["ttlStrategy"]
    assert ttl["secondsAfterFailure"] >= 24 * 3600 and ttl["secondsAfterSuccess"] > 0
    (first,) = [o for o in compiled() if o["kind"] == "Workflow"]
    assert first["spec"]["ttlStrategy"] == ttl  # the first run does not stay forever


class FakeAPI(BaseHTTPRequestHandler):
    """The API server as the watcher sees it: a workflow's phase and shutdown, Job deletes."""

    workflow: dict | None = {"spec": {}, "status": {"phase": "Running"}}
    deleted: list[str] = []
    gets = 0

    def do_GET(self):
        FakeAPI.gets += 1
        if FakeAPI.gets == 3:  # the workflow is terminated while the Job runs
            FakeAPI.workflow = {"spec": {"shutdown": "Terminate"}, "status": {"phase": "Running"}}
        body = json.dumps(FakeAPI.workflow).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def do_DELETE(self):
        assert self.headers["Authorization"] == "Bearer t0ken"
        FakeAPI.deleted.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def api(tmp_path, monkeypatch):
    (tmp_path / "token").write_text("t0ken\n")
    FakeAPI.workflow, FakeAPI.deleted, FakeAPI.gets = {"status": {"phase": "Running"}}, [], 0
    server = HTTPServer(("127.0.0.1", 0), FakeAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("DAE_API_SERVER", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("DAE_API_TOKEN_DIR", str(tmp_path))
    monkeypatch.setenv("NAMESPACE", "dae")
    monkeypatch.setenv("WORKFLOW", "dae-retrain-1")
    yield server
    server.shutdown()


def test_the_watcher_deletes_the_job_of_a_terminated_workflow(api, capsys):
    assert kube_api.watch("dae-train-x7", interval=0.01) == 0
    assert FakeAPI.gets == 3
    assert FakeAPI.deleted == [
        "/apis/batch/v1/namespaces/dae/jobs/dae-train-x7?propagationPolicy=Background"
    ]
    assert "shut down (Terminate)" in capsys.readouterr().out


def test_the_first_step_fails_fast_in_one_line_when_the_api_server_is_out_of_reach(
    api, monkeypatch, capsys
):
    assert kube_api.main(["check"]) == 0
    api.shutdown()
    api.server_close()
    monkeypatch.setenv("DAE_API_SERVER", f"http://127.0.0.1:{api.server_port}")
    assert kube_api.main(["check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cannot reach the Kubernetes API server at http://127.0.0.1:") and (
        err.strip().endswith(
            "the NetworkPolicy dae-workflow-egress-apiserver must allow it (docs/kubernetes.md)"
        )
    )
    assert err.count("\n") == 1
    steps, tasks = _steps(compiled()), _tasks(compiled())
    check = steps["api-check"]
    assert "retryStrategy" not in check and int(check["activeDeadlineSeconds"]) <= 120
    assert check["container"]["command"] == ["python", "-m", "dae.pipeline.kube_api", "check"]
    assert list(tasks)[0] == "api-check" and "dependencies" not in tasks["api-check"]
