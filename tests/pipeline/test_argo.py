"""`dae argo compile`: the DAG of pipeline/dag.py as Argo Workflows manifests, checked in as
k8s/components/argo/workflow.yaml; the run lifecycle its steps use (`dae stage --create |
--cache | --cache-only`, `dae runs finish | fail`). The compiled workflow runs on the real Argo
controller in tests/cluster (test_retraining.py, test_failures.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from argo_rules import argo_errors, resource_state, retry
from stand_ins import stand_in

from dae.cli import EXIT_BUSY, EXIT_FAILED, EXIT_USAGE, main
from dae.component import StageError
from dae.pipeline import argo, lifecycle, runner
from dae.pipeline.config import Config, load_config
from dae.pipeline.dag import DAG, STAGES, Node
from dae.pipeline.metadata import MetadataStore

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "k8s" / "base" / "config.yaml"
LAYOUT = REPO / "k8s" / "components" / "argo" / "layout.yaml"
CHECKED_IN = REPO / "k8s" / "components" / "argo" / "workflow.yaml"


def compiled(config: Config | None = None, layout=LAYOUT) -> list[dict]:
    config = config or load_config(CONFIG, "default", [])
    return argo.compile_pipeline(config, argo.load_layout(layout))


def _template(objects) -> dict:
    (template,) = [o for o in objects if o["kind"] == "WorkflowTemplate"]
    return template


def _steps(objects) -> dict[str, dict]:
    return {t["name"]: t for t in _template(objects)["spec"]["templates"]}


def _tasks(objects) -> dict[str, dict]:
    return {t["name"]: t for t in _steps(objects)["pipeline"]["dag"]["tasks"]}


def listing(objects) -> str:
    """The DAG as `argo get` shows it: each task after those it waits for."""
    return "\n".join(
        f"{n:<14} <- {', '.join(t.get('dependencies', [])) or '(first)'}"
        for n, t in _tasks(objects).items()
    )


# ---- the compiled manifests ----------------------------------------------------------------


def test_the_checked_in_manifests_are_what_the_command_compiles(tmp_path, capsys):
    out = tmp_path / "workflow.yaml"
    argv = ["argo", "compile", "--config", str(CONFIG), "--layout", str(LAYOUT), "-o", str(out)]
    assert main(argv) == 0
    assert out.read_text() == CHECKED_IN.read_text(), (
        "k8s/components/argo/workflow.yaml is not what `dae argo compile` makes of the current "
        "DAG, config and layout: regenerate it (README, Running on Kubernetes)"
    )
    print(listing(compiled()))


def _stage_of(task: str) -> str:
    return next(s for s in STAGES if task == s or task.startswith(f"{s}-"))


def test_the_workflow_is_the_dag():
    """Every stage is there, in its own Pod(s), and waits for exactly what it reads,
    directly or not; the first creates the run, the last writes its end."""
    tasks = _tasks(compiled())
    closure: dict[str, set[str]] = {}
    for name, task in tasks.items():  # listed in an order where dependencies come first
        deps = task.get("dependencies", [])
        assert all(d in closure for d in deps), f"{name} waits for a later task"
        closure[name] = set(deps).union(*(closure[d] for d in deps))
    ancestors: dict[str, set[str]] = {}
    for n in DAG:
        producers = {ref.split(".")[0] for ref in n.inputs.values()}
        ancestors[n.name] = producers.union(*(ancestors[p] for p in producers))
    assert closure[STAGES[0]] == {"api-check"}  # the API server is reachable, first of all
    stages = {name: _stage_of(name) for name in tasks if name not in ("finish", "api-check")}
    assert set(stages.values()) == set(STAGES)
    for name, stage in stages.items():
        waited = {stages[t] for t in closure[name] - {"api-check"}} - {stage}
        expected = ancestors[stage] or set()
        if stage != STAGES[0]:
            expected |= {STAGES[0]}  # every stage follows the run's creation
        assert waited == expected, (name, waited, expected)
    assert {stages[t] for t in closure["finish"] - {"api-check"}} == set(STAGES)
    first = _steps(compiled())[STAGES[0]]["container"]["args"]
    assert "--create" in first and "--cache" in first
    assert list(tasks)[:2] == ["api-check", STAGES[0]]


def test_scaled_out_stages_ask_the_cache_first():
    objects = compiled()
    tasks, steps = _tasks(objects), _steps(objects)
    for stage, pods in (("tune", ["tune-chief", "tune-workers"]), ("train", ["train"])):
        probe = steps[f"{stage}-cache"]["container"]["args"]
        assert probe[:2] == ["stage", stage] and "--cache-only" in probe
        for name in pods:
            assert tasks[name]["dependencies"] == [f"{stage}-cache"]
            assert tasks[name]["when"] == (
                f"{{{{tasks.{stage}-cache.outputs.parameters.result}}}} != cached"
            )
    # The training Job's members never take a hit on their own (all or none must train).
    assert "--cache" not in steps["train"]["resource"]["manifest"]
    parameters = {
        p["name"]: p["value"] for p in _template(objects)["spec"]["arguments"]["parameters"]
    }
    assert parameters == {"tune-workers": "2", "train-workers": "2"}


def test_every_step_has_its_size_and_retries_only_transient_failures():
    steps = _steps(compiled())
    cpu = {}
    for name, step in steps.items():
        if "container" in step:
            resources = step["container"]["resources"]
            assert set(resources) == {"requests", "limits"}, name
            cpu[name] = resources["requests"]["cpu"]
    assert cpu["transform"] == "500m" and cpu["push"] == "100m"  # light, tiny
    assert cpu["tune-worker"] == "2"  # heavy: and the training Job's workers:
    job = yaml.safe_load(steps["train"]["resource"]["manifest"].replace("{{", "").replace("}}", ""))
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "2"
    for name, step in steps.items():
        if "container" not in step or name == "api-check":  # not retried (test_api_check...)
            continue
        expression = step["retryStrategy"].get("expression")
        if name == "record-failure":  # must be written: retried whatever went wrong
            assert expression is None and step["retryStrategy"]["limit"] == "5"
            continue
        for code in ("137", "143", "130", "-1"):  # OOM-killed, evicted, SIGTERM, Pod lost
            assert retry(expression, code, "Failed", f"Error (exit code {code})"), (name, code)
        assert retry(expression, "-1", "Error", "pod deleted"), name
        for code in (str(EXIT_FAILED), str(EXIT_USAGE), str(EXIT_BUSY)):
            assert not retry(expression, code, "Failed", f"Error (exit code {code})"), (name, code)
    # The training Job: retried when a worker was lost, not for a worker's own verdict.
    resource = steps["train"]["resource"]
    expression = steps["train"]["retryStrategy"]["expression"]
    for reason, retried in (
        ("BackoffLimitExceeded", True),
        ("PodFailurePolicy", False),
        ("DeadlineExceeded", False),
    ):
        status = {"status": {"failed": 1, "conditions": [{"type": "Failed", "reason": reason}]}}
        phase, message = resource_state(
            resource["successCondition"], resource["failureCondition"], status
        )
        assert phase == "Failed" and retry(expression, "1", "Failed", message) is retried, reason
    done = {"status": {"succeeded": 2, "completionTime": "2026-01-01T03:10:00Z"}}
    assert resource_state(resource["successCondition"], resource["failureCondition"], done)[0] == (
        "Succeeded"
    )
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["onExitCodes"]["values"] == [EXIT_FAILED, EXIT_USAGE, EXIT_BUSY]


def test_schedule_mutex_and_exit_handler():
    objects = compiled()
    spec = _template(objects)["spec"]
    assert spec["synchronization"] == {"mutexes": [{"name": "dae-root"}]}
    assert spec["automountServiceAccountToken"] is False
    assert spec["executor"] == {"serviceAccountName": spec["serviceAccountName"]}
    handler = _steps(objects)[spec["onExit"]]
    ((step,),) = handler["steps"]
    assert step["when"] == "{{workflow.status}} != Succeeded"
    args = _steps(objects)[step["template"]]["container"]["args"]
    assert args[:3] == ["runs", "fail", "{{workflow.name}}"] and "{{workflow.failures}}" in args
    (cron,) = [o for o in objects if o["kind"] == "CronWorkflow"]
    assert cron["spec"] | {"workflowSpec": None} == {
        "schedules": ["0 3 * * *"],
        "timezone": "Etc/UTC",
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": 3600,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "workflowSpec": None,
    }
    assert cron["spec"]["workflowSpec"] == {"workflowTemplateRef": {"name": "dae-pipeline"}}
    (role,) = [o for o in objects if o["kind"] == "Role"]
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert granted == {
        ("argoproj.io", "workflowtaskresults", "create"),
        ("argoproj.io", "workflowtaskresults", "patch"),
        ("batch", "jobs", "create"),
        ("batch", "jobs", "get"),
        ("batch", "jobs", "delete"),  # the training Job's watcher deletes its own Job
        ("argoproj.io", "workflows/finalizers", "update"),
        ("argoproj.io", "workflows", "get"),
    }


@pytest.mark.parametrize("layout", [LAYOUT, None])
def test_the_manifests_validate_against_argos_schema(layout):
    for profile in ("default", "smoke"):
        for obj in compiled(load_config(CONFIG, profile, []), layout):
            if obj["apiVersion"].startswith("argoproj.io/"):
                assert not argo_errors(obj), (obj["kind"], argo_errors(obj)[:5])


def test_without_a_layout_every_stage_is_one_pod():
    objects = compiled(layout=None)
    assert set(_tasks(objects)) == {"api-check", *STAGES, "finish"}
    assert not [o for o in objects if o["kind"] == "Service"]
    assert "arguments" not in _template(objects)["spec"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("stages: {trian: {}}", "unknown stage 'trian'"),
        ("stages: {tune: {scale_out: spark}}", "unknown scale_out 'spark'"),
        ("stages: {push: {resources: {requests: {cpu: 1}}}}", "resources need requests and"),
        ("stages: {ingest: {scale_out: keras-tuner}}", "creates the run: no scale_out"),
        ("stages: {push: {workers: 3}}", "'workers' needs a scale_out"),
        ("stages: {tune: {scale_out: keras-tuner, workers: 0}}", "workers must be a positive"),
        ("retries: -1", "retries must be 0 or more"),
        ("schedul: '0 3 * * *'", "unknown key(s) ['schedul']"),
        ("[1, 2]", "must hold a mapping"),
    ],
)
def test_a_bad_layout_is_one_line(tmp_path, capsys, text, message):
    layout = tmp_path / "layout.yaml"
    layout.write_text(text)
    assert main(["argo", "compile", "--layout", str(layout)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("dae: error: ") and message in err and "\n" not in err


# ---- the run lifecycle of the steps (stand-in stages) ----------------------------------------


@pytest.fixture
def two_stages(monkeypatch):
    calls = []

    def make(name, inputs=()):
        def run(ctx):
            calls.append(name)
            (ctx.outputs["out"] / "data.txt").write_text(name)
            return {f"{name}_metric": 1.0}

        return stand_in(run, inputs=inputs, parameters=("seed",))

    dag = (Node("a", make("a")), Node("b", make("b", ("x",)), {"x": "a.out"}))
    monkeypatch.setattr(runner, "DAG", dag)
    monkeypatch.setattr(runner, "STAGES", ("a", "b"))
    monkeypatch.setattr(runner, "node", {n.name: n for n in dag}.__getitem__)
    return calls


def test_a_run_is_created_once_then_finished(tmp_path, two_stages):
    assert runner.create_run(Config(), tmp_path, "wf-1") is True
    assert runner.create_run(Config(), tmp_path, "wf-1") is False  # a retried first step
    with pytest.raises(StageError, match="already exists with another config"):
        runner.create_run(Config(seed=7), tmp_path, "wf-1")
    with pytest.raises(StageError, match="invalid run id"):
        runner.create_run(Config(), tmp_path, "../escape")
    with pytest.raises(StageError, match="cannot finish: a, b have not succeeded"):
        lifecycle.finish_run(tmp_path, "wf-1")
    for stage in ("a", "b"):
        runner.run_stage(Config(), tmp_path, "wf-1", stage, use_cache=True)
    metrics = lifecycle.finish_run(tmp_path, "wf-1")
    assert metrics["status"] == "succeeded" and metrics["a_metric"] == 1.0
    assert list(metrics["stage_seconds"]) == ["a", "b"] and metrics["cached_stages"] == []
    assert not json.loads((tmp_path / "runs" / "wf-1" / "b" / "stage.json").read_text()).get(
        "rerun"
    )
    with pytest.raises(StageError, match=r"run 'wf-1' already exists \(succeeded\)"):
        runner.create_run(Config(), tmp_path, "wf-1")  # a run id is used once
    # The exit handler of a workflow that failed for that leaves the finished run alone.
    assert "already ended (succeeded)" in lifecycle.fail_run(tmp_path, "wf-1", "workflow Failed")
    store = MetadataStore(f"sqlite:///{tmp_path}/metadata.sqlite")
    (run,) = [r for r in store.runs() if r["name"] == "wf-1"]
    assert run["properties"]["status"] == "succeeded"

    # A resubmitted workflow: every stage from the cache, the scaled-out ones by a probe.
    runner.create_run(Config(), tmp_path, "wf-2")
    assert runner.cached_stage(Config(), tmp_path, "wf-2", "a").cached
    assert runner.run_stage(Config(), tmp_path, "wf-2", "b", use_cache=True).cached
    assert two_stages == ["a", "b"]
    assert lifecycle.finish_run(tmp_path, "wf-2")["cached_stages"] == ["a", "b"]
    # ... unless something changed: then the probe records nothing, and the stage runs.
    runner.create_run(Config(seed=3), tmp_path, "wf-3")
    assert runner.cached_stage(Config(seed=3), tmp_path, "wf-3", "a") is None
    assert store.executions_of_run("wf-3") == []


def test_the_exit_handler_records_a_failed_run(tmp_path, two_stages, capsys):
    runner.create_run(Config(), tmp_path, "wf-1")
    runner.run_stage(Config(), tmp_path, "wf-1", "a", use_cache=True)
    failures = json.dumps(
        [
            {
                "displayName": "b(0)",
                "message": "Error (exit code 1)",
                "templateName": "b",
                "phase": "Failed",
            }
        ]
    )
    argv = ["runs", "fail", "wf-1", "--root", str(tmp_path), "--reason", "workflow Failed"]
    assert main([*argv, "--failures", failures]) == 0
    assert (
        "run wf-1: failed (workflow Failed: b(0): Error (exit code 1))" in capsys.readouterr().out
    )
    metrics = json.loads((tmp_path / "runs" / "wf-1" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and list(metrics["stage_seconds"]) == ["a"]
    assert metrics["error"] == "workflow Failed: b(0): Error (exit code 1)"
    # A workflow whose first step failed before the run existed is still on record.
    assert (
        main(["runs", "fail", "wf-9", "--root", str(tmp_path), "--reason", "workflow Error"]) == 0
    )
    runs = {
        r["name"]: r["properties"]
        for r in MetadataStore(f"sqlite:///{tmp_path}/metadata.sqlite").runs()
    }
    assert runs["wf-1"]["status"] == runs["wf-9"]["status"] == "failed"
    assert runs["wf-9"]["error"] == "workflow Error"
    assert main(["runs", "finish", "nope", "--root", str(tmp_path)]) == EXIT_FAILED
    assert capsys.readouterr().err.strip() == f"dae: error: no run 'nope' under {tmp_path / 'runs'}"


def test_stage_flags_are_checked(tmp_path, capsys):
    argv = ["stage", "ingest", "--run", "r1", "--root", str(tmp_path), "--profile", "smoke"]
    assert main(argv) == EXIT_USAGE
    assert "go with --create" in capsys.readouterr().err
