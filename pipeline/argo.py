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
cluster's business, kept in k8s/): this module names no stage. Before the first stage, a step
checks that the Pods reach the API server (Argo's executor must). Every object is built from
typed records (pipeline/argo_model.py, argo_kinds.py) and written out as YAML once.
"""

from __future__ import annotations

import dataclasses

import yaml

from dae.pipeline.argo_job import Dumper, multi_worker_step
from dae.pipeline.argo_kinds import (
    Arguments,
    DAGTask,
    DAGTemplate,
    ExecutorConfig,
    Metadata,
    Mutex,
    Parameter,
    PodGC,
    Sequence,
    Synchronization,
    Template,
    TTLStrategy,
    WorkflowSpec,
    WorkflowStep,
    WorkflowTemplate,
)
from dae.pipeline.argo_layout import (
    ACCOUNT,
    CLAIM,
    LABELS,
    ROOT,
    TEMPLATE,
    Layout,
    cluster_objects,
    load_layout,
    pod_security,
    volumes,
)
from dae.pipeline.argo_model import ObjectMeta
from dae.pipeline.argo_steps import (
    API_CHECK,
    CHECKOV,
    RUN,
    RUNS,
    WORKERS,
    api_check,
    cache_probe,
    executor,
    executor_patch,
    first_step,
    keras_tuner_steps,
    pod_container,
    retry_strategy,
    stage_args,
    step_template,
)
from dae.pipeline.config import Config
from dae.pipeline.dag import DAG

__all__ = ["compile_pipeline", "load_layout", "render"]

TTL_SUCCEEDED = 24 * 3600  # a finished workflow (its record is dae's: `dae runs list`)
TTL_FAILED = 7 * 24 * 3600  # a failed one, Pods and logs, long enough to debug


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


def _tasks(layout: Layout) -> tuple[list[DAGTask], list[Template]]:
    """The DAG's tasks and their templates, stage by stage in the DAG's order, after the
    check that the API server is within reach."""
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
            count = Sequence(count=f"{{{{workflow.parameters.{name}-workers}}}}")
            index = Arguments(parameters=[Parameter(name="index", value="{{item}}")])
            tasks += [
                _task(f"{name}-chief", f"{name}-chief", [f"{name}-cache"], when=when),
                _task(
                    f"{name}-workers",
                    f"{name}-worker",
                    [f"{name}-cache"],
                    when=when,
                    with_sequence=count,
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


def _task(name: str, template: str, deps: list[str], **extra) -> DAGTask:
    return DAGTask(name=name, template=template, dependencies=deps or None, **extra)


def _single(layout: Layout, name: str) -> Template:
    spec = layout.stage(name)
    container = pod_container(stage_args(name, "--cache"), spec.resources)
    return step_template(name, name, container, spec.deadline, retry_strategy(layout))


def _bookkeeping(layout: Layout) -> list[Template]:
    """`dae runs finish` after the last stages; on failure, `dae runs fail` (retried until
    it is written: even a busy root or a store restarting must not leave the run running)."""
    finish = pod_container(["runs", "finish", RUN, "--root", ROOT], RUNS)
    reason = ["--reason", "workflow {{workflow.status}}", "--failures", "{{workflow.failures}}"]
    fail = pod_container(["runs", "fail", RUN, "--root", ROOT, *reason], RUNS)
    record = dataclasses.replace(retry_strategy(layout, None), limit="5")
    when = "{{workflow.status}} != Succeeded"
    return [
        step_template("finish", "finish", finish, layout.step_deadline, retry_strategy(layout)),
        Template(
            name="exit-handler",
            steps=[[WorkflowStep(name="record-failure", template="record-failure", when=when)]],
        ),
        step_template("record-failure", "record-failure", fail, layout.step_deadline, record),
    ]


def workflow_template(layout: Layout) -> WorkflowTemplate:
    tasks, templates = _tasks(layout)
    scaled = [(n.name, layout.stage(n.name)) for n in DAG if layout.stage(n.name).scale_out]
    parameters = [
        Parameter(
            name=f"{name}-workers",
            value=str(spec.workers),
            description=WORKERS[spec.scale_out].format(name),
        )
        for name, spec in scaled
    ]
    spec = WorkflowSpec(
        entrypoint="pipeline",
        on_exit="exit-handler",
        arguments=Arguments(parameters=parameters) if parameters else None,
        service_account_name=ACCOUNT,
        automount_service_account_token=False,
        executor=ExecutorConfig(service_account_name=ACCOUNT),
        active_deadline_seconds=layout.deadline,
        # Never two runs of one root at once (the metadata store's lock refuses them too).
        synchronization=Synchronization(mutexes=[Mutex(name=CLAIM)]),
        pod_metadata=Metadata(
            labels={"app.kubernetes.io/name": "dae", "app.kubernetes.io/part-of": "dae"},
            annotations=CHECKOV,
        ),
        # `dae` turns SIGTERM into a clean "failed" record: give it time to write it. Argo's
        # `init` container, in every Pod, meets Pod Security "restricted" (steps.executor).
        pod_spec_patch=executor_patch(
            termination_grace_period_seconds=60, init_containers=[executor("init")]
        ),
        # Succeeded Pods go at once; a failed workflow's stay with it for a week to be read.
        pod_gc=PodGC(strategy="OnPodSuccess"),
        ttl_strategy=TTLStrategy(
            seconds_after_success=TTL_SUCCEEDED, seconds_after_failure=TTL_FAILED
        ),
        security_context=pod_security(),
        volumes=volumes(config=True),
        templates=[
            Template(name="pipeline", dag=DAGTemplate(tasks=tasks)),
            *templates,
            *_bookkeeping(layout),
        ],
    )
    return WorkflowTemplate(metadata=ObjectMeta(name=TEMPLATE, labels=dict(LABELS)), spec=spec)


def compile_pipeline(config: Config, layout: Layout) -> list[dict]:
    """Every object the workflow needs, in the order `kubectl apply` should create them."""
    return [o.to_dict() for o in cluster_objects(config, layout, workflow_template(layout))]


HEADER = """\
# Generated by `dae argo compile` from pipeline/dag.py, a config and a layout: do not edit.
# Regenerate it after changing either (README, "Running on Kubernetes"); a test fails when it
# differs from what the command produces.
"""


def render(objects: list[dict]) -> str:
    docs = [yaml.dump(o, Dumper=Dumper, sort_keys=False, width=200) for o in objects]
    return HEADER + "---\n" + "---\n".join(docs)
