"""`dae argo compile`: the pipeline as Argo Workflows manifests, so that the graph has one
definition (pipeline/dag.py) whether `dae run` walks it or Argo does.

Every stage of the DAG is a task in its own Pod running `dae stage NAME --run
{{workflow.name}} --cache` (a resubmitted workflow skips what dae's cache holds); the first
creates the run (`--create`) from the config compiled into a ConfigMap, `dae runs finish`
writes its metrics, and an exit handler records a failed run (`dae runs fail`). A stage the
layout scales out gets a cache probe first (`--cache-only`), so a cache hit never schedules
its Pods, then:
  keras-tuner: a chief (the oracle, behind a Service) and N worker tasks, Argo Pods each,
    retried one by one (a restarted Keras Tuner worker gets its trial back from the chief);
  multi-worker: an Indexed Job of N MultiWorkerMirroredStrategy workers that a resource step
    creates and waits for. A collective cannot take a replacement member: the Job fails as a
    whole at the first lost worker (its controller stops the others) and the step's retry
    starts them all again, resuming from the chief's epoch backup.
Which stage scales out, each Pod's size and the schedule come from a layout file (the
cluster's business, kept in k8s/): this module names no stage.
"""

from __future__ import annotations

import yaml

from dae.pipeline.argo_layout import (
    ACCOUNT,
    CLAIM,
    ROOT,
    TEMPLATE,
    Layout,
    cluster_objects,
    load_layout,
    pod_security,
    volumes,
)
from dae.pipeline.argo_steps import (
    API_CHECK,
    CHECKOV,
    RUN,
    RUNS,
    WORKERS,
    Dumper,
    api_check,
    cache_probe,
    executor_patch,
    first_step,
    keras_tuner_steps,
    multi_worker_step,
    pod_container,
    retry_strategy,
    stage_args,
    step_template,
)
from dae.pipeline.config import Config
from dae.pipeline.dag import DAG

__all__ = ["compile_pipeline", "load_layout", "render"]


def _ancestors() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for n in DAG:
        producers = {ref.split(".")[0] for ref in n.inputs.values()}
        out[n.name] = producers.union(*(out[p] for p in producers))
    return out


def _direct(stage: str, ancestors: dict[str, set[str]]) -> list[str]:
    """The stages `stage` waits for, without those it waits for through another."""
    mine = ancestors[stage] or ({DAG[0].name} - {stage})  # every stage follows the first
    return [
        s for s in (n.name for n in DAG) if s in mine and not any(s in ancestors[o] for o in mine)
    ]


def _tasks(layout: Layout) -> tuple[list[dict], list[dict]]:
    """The DAG's tasks and their templates, stage by stage in the DAG's order."""
    ancestors, ends = _ancestors(), {}
    tasks, templates = [_task(API_CHECK, API_CHECK, [])], []
    for i, n in enumerate(DAG):
        name, kind = n.name, layout.stage(n.name).scale_out
        deps = [task for s in _direct(name, ancestors) for task in ends[s]] or [API_CHECK]
        if kind is None:
            templates.append(first_step(layout, name) if i == 0 else _single(layout, name))
            tasks.append(_task(name, name, deps))
            ends[name] = [name]
            continue
        templates.append(cache_probe(layout, name))
        tasks.append(_task(f"{name}-cache", f"{name}-cache", deps))
        when = f"{{{{tasks.{name}-cache.outputs.parameters.result}}}} != cached"
        if kind == "keras-tuner":
            templates += keras_tuner_steps(layout, name)
            count = {"count": f"{{{{workflow.parameters.{name}-workers}}}}"}
            index = {"parameters": [{"name": "index", "value": "{{item}}"}]}
            tasks += [
                _task(f"{name}-chief", f"{name}-chief", [f"{name}-cache"], when=when),
                _task(
                    f"{name}-workers",
                    f"{name}-worker",
                    [f"{name}-cache"],
                    when=when,
                    withSequence=count,
                    arguments=index,
                ),
            ]
            ends[name] = [f"{name}-chief", f"{name}-workers"]
        else:
            templates.append(multi_worker_step(layout, name))
            tasks.append(_task(name, name, [f"{name}-cache"], when=when))
            ends[name] = [name]
    sinks = [n.name for n in DAG if not any(n.name in ancestors[o.name] for o in DAG)]
    tasks.append(_task("finish", "finish", [t for s in sinks for t in ends[s]]))
    # Its template last: the overlays' JSON patches find the stages' templates by index.
    return tasks, [*templates, api_check(layout)]


def _task(name: str, template: str, deps: list[str], **extra) -> dict:
    return {"name": name, "template": template, **({"dependencies": deps} if deps else {}), **extra}


def _single(layout: Layout, name: str) -> dict:
    spec = layout.stage(name)
    container = pod_container(stage_args(name, "--cache"), spec.resources)
    return step_template(name, name, container, spec.deadline, retry_strategy(layout))


def _bookkeeping(layout: Layout) -> list[dict]:
    """`dae runs finish` after the last stages; on failure, `dae runs fail` (retried until
    it is written: even a busy root or a store restarting must not leave the run running)."""
    finish = pod_container(["runs", "finish", RUN, "--root", ROOT], RUNS)
    reason = ["--reason", "workflow {{workflow.status}}", "--failures", "{{workflow.failures}}"]
    fail = pod_container(["runs", "fail", RUN, "--root", ROOT, *reason], RUNS)
    record = retry_strategy(layout, None) | {"limit": "5"}
    when = "{{workflow.status}} != Succeeded"
    return [
        step_template("finish", "finish", finish, layout.step_deadline, retry_strategy(layout)),
        {
            "name": "exit-handler",
            "steps": [[{"name": "record-failure", "template": "record-failure", "when": when}]],
        },
        step_template("record-failure", "record-failure", fail, layout.step_deadline, record),
    ]


TTL_SUCCEEDED = 24 * 3600  # a finished workflow (its record is dae's: `dae runs list`)
TTL_FAILED = 7 * 24 * 3600  # a failed one, Pods and logs, long enough to debug


def workflow_template(layout: Layout) -> dict:
    tasks, templates = _tasks(layout)
    scaled = [(n.name, layout.stage(n.name)) for n in DAG if layout.stage(n.name).scale_out]
    parameters = [
        {
            "name": f"{name}-workers",
            "value": str(spec.workers),
            "description": WORKERS[spec.scale_out].format(name),
        }
        for name, spec in scaled
    ]
    spec = {
        "entrypoint": "pipeline",
        "onExit": "exit-handler",
        **({"arguments": {"parameters": parameters}} if parameters else {}),
        "serviceAccountName": ACCOUNT,
        "automountServiceAccountToken": False,
        "executor": {"serviceAccountName": ACCOUNT},
        "activeDeadlineSeconds": layout.deadline,
        # Never two runs of one root at once (the metadata store's lock refuses them too).
        "synchronization": {"mutexes": [{"name": CLAIM}]},
        "podMetadata": {
            "labels": {"app.kubernetes.io/name": "dae", "app.kubernetes.io/part-of": "dae"},
            "annotations": CHECKOV,
        },
        # `dae` turns SIGTERM into a clean "failed" record: give it time to write it. Argo's
        # `init` container, in every Pod, meets Pod Security "restricted" (steps.executor_patch).
        "podSpecPatch": executor_patch("initContainers", "init", terminationGracePeriodSeconds=60),
        # Succeeded Pods go at once; a failed workflow's stay with it for a week to be read.
        "podGC": {"strategy": "OnPodSuccess"},
        "ttlStrategy": {"secondsAfterSuccess": TTL_SUCCEEDED, "secondsAfterFailure": TTL_FAILED},
        "securityContext": pod_security(),
        "volumes": volumes(config=True),
        "templates": [
            {"name": "pipeline", "dag": {"tasks": tasks}},
            *templates,
            *_bookkeeping(layout),
        ],
    }
    labels = {"app.kubernetes.io/name": "dae", "app.kubernetes.io/component": "workflow"}
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": {"name": TEMPLATE, "labels": labels},
        "spec": spec,
    }


def compile_pipeline(config: Config, layout: Layout) -> list[dict]:
    """Every object the workflow needs, in the order `kubectl apply` should create them."""
    return cluster_objects(config, layout, workflow_template(layout))


HEADER = """\
# Generated by `dae argo compile` from pipeline/dag.py, a config and a layout: do not edit.
# Regenerate it after changing either (README, "Running on Kubernetes"); a test fails when it
# differs from what the command produces.
"""


def render(objects: list[dict]) -> str:
    docs = [yaml.dump(o, Dumper=Dumper, sort_keys=False, width=200) for o in objects]
    return HEADER + "---\n" + "---\n".join(docs)
