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

from dae.components.distributed import TUNER_WORKERS
from dae.pipeline.argo_layout import (
    ACCOUNT,
    CLAIM,
    IMAGE,
    ROOT,
    TEMPLATE,
    Layout,
    cluster_objects,
    hardened,
    load_layout,
    pod_security,
    volumes,
)
from dae.pipeline.config import Config
from dae.pipeline.dag import DAG

__all__ = ["compile_pipeline", "load_layout", "render"]

RUN = "{{workflow.name}}"
CONFIG_DIR = "/etc/dae"
RESULT = "/tmp/result"  # what a cache probe found: cached | missed
# dae's exit codes that no retry can fix: a stage's own failure (failed validation, refused
# blessing, bad data), bad usage, a busy root (dae/cli.py: EXIT_FAILED, _USAGE, _BUSY).
PERMANENT = (1, 2, 75)
CHECKOV = {
    "checkov.io/skip1": "CKV_K8S_43=images are pinned by release tag; pin digests at deploy "
    "time with kustomize edit set image",
    "checkov.io/skip2": "CKV_K8S_35=the pipeline reads the metadata store URL from "
    "$DAE_METADATA_URL, a secretKeyRef (never a literal or a ConfigMap)",
}
WORKERS = {
    "keras-tuner": "how many Keras Tuner workers run {}'s trials (beside its chief)",
    "multi-worker": "how many MultiWorkerMirroredStrategy workers {} runs on",
}
# `dae runs finish|fail` load no stage (no TensorFlow): a tenth of a stage's memory does.
RUNS = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "250m", "memory": "512Mi"}}
BACKOFF = {"duration": "30s", "factor": "2", "maxDuration": "10m"}  # IntOrString: a string
# Pod loss (status Error), OOM kills, evictions, SIGTERM: anything but dae's own verdicts.
TRANSIENT = "lastRetry.status == 'Error' || !(lastRetry.exitCode in [{}])".format(
    ", ".join(f"'{code}'" for code in PERMANENT)
)
# A Job that failed for a lost or killed worker (not for a worker's exit code in PERMANENT,
# nor for its deadline). The resource step's own Pod lost is not retried: its Job may live on.
JOB_FAILED = (
    "status.conditions.0.reason in (DeadlineExceeded,PodFailurePolicy),"
    "status.conditions.0.reason in (BackoffLimitExceeded)"
)
JOB_TRANSIENT = "lastRetry.message contains 'BackoffLimitExceeded'"
WAIT_FOR_METADATA = """\
import os, socket, sys, time
from urllib.parse import urlsplit
url = urlsplit(os.environ["DAE_METADATA_URL"])
if url.hostname is None:
    sys.exit(0)
host, port = url.hostname, url.port or 5432
deadline = time.monotonic() + 900
while True:
    try:
        socket.create_connection((host, port), timeout=5).close()
        break
    except OSError as e:
        if time.monotonic() > deadline:
            sys.exit(f"the metadata store {host}:{port} is unreachable: {e}")
        print(f"waiting for the metadata store at {host}:{port}", flush=True)
        time.sleep(5)
"""
TF_CONFIG = """\
set -eu
workers="" i=0
while [ "$i" -lt "$NUM_WORKERS" ]; do
  workers="$workers${{workers:+,}}\\"$JOB_NAME-$i.{service}:$TF_PORT\\""
  i=$((i + 1))
done
TF_CONFIG="{{\\"cluster\\": {{\\"worker\\": [$workers]}}, \\"task\\": {{\\"type\\": \\"worker\\", \\"index\\": $WORKER_INDEX}}}}"
export TF_CONFIG
echo "TF_CONFIG=$TF_CONFIG"
exec dae stage {stage} --run "$RUN_ID" --root {root}
"""  # noqa: E501 - a shell line


def _env(*extra: dict) -> list[dict]:
    secret = {"secretKeyRef": {"name": "dae-metadata", "key": "url"}}
    return [
        *extra,
        {"name": "DAE_METADATA_URL", "valueFrom": secret},
        {"name": "HOME", "value": "/tmp"},
    ]


def _value(name: str, value) -> dict:
    return {"name": name, "value": str(value)}


def _field(name: str, path: str) -> dict:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _container(args, resources, env=(), config=False, ports=()) -> dict:
    mounts = [{"name": "dae-root", "mountPath": ROOT}, {"name": "tmp", "mountPath": "/tmp"}]
    if config:
        mounts.append({"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
    container = {
        "image": IMAGE,
        "imagePullPolicy": "Always",
        "command": ["dae"],
        "args": list(args),
        "env": _env(*env),
        "resources": resources,
    }
    if ports:
        container["ports"] = list(ports)
    return container | {"securityContext": hardened(), "volumeMounts": mounts}


def _retry(layout: Layout, expression: str | None = TRANSIENT) -> dict:
    retry = {"limit": str(layout.retries), "retryPolicy": "Always", "backoff": BACKOFF}
    return retry | ({"expression": expression} if expression else {})


def _template(
    name: str, component: str, container: dict, deadline: int, retry: dict, **extra
) -> dict:
    labels = {"app.kubernetes.io/component": component}
    return {
        "name": name,
        "metadata": {"labels": labels},
        "activeDeadlineSeconds": str(deadline),
        "retryStrategy": retry,
        **extra,
        "container": container,
    }


def _stage_args(name: str, *extra: str) -> list[str]:
    return ["stage", name, "--run", RUN, "--root", ROOT, *extra]


def _first(layout: Layout, name: str) -> dict:
    """The first stage creates the run from the compiled config, once the store is up."""
    spec = layout.stage(name)
    args = _stage_args(name, "--cache", "--create", "--config", f"{CONFIG_DIR}/config.yaml")
    wait = {
        "name": "wait-for-metadata",
        "image": IMAGE,
        "imagePullPolicy": "Always",
        "command": ["python", "-c", WAIT_FOR_METADATA],
        "env": _env()[:1],
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"cpu": "100m", "memory": "128Mi"},
        },
        "securityContext": hardened(),
    }
    container = _container(args, spec.resources, config=True)
    return _template(name, name, container, spec.deadline, _retry(layout), initContainers=[wait])


def _probe(layout: Layout, name: str) -> dict:
    args = _stage_args(name, "--cache-only", "--result", RESULT)
    outputs = {"parameters": [{"name": "result", "valueFrom": {"path": RESULT}}]}
    container = _container(args, layout.resources)
    return _template(
        f"{name}-cache",
        f"{name}-cache",
        container,
        layout.step_deadline,
        _retry(layout),
        outputs=outputs,
    )


def _keras_tuner(layout: Layout, name: str) -> list[dict]:
    """The chief serves the oracle on every address of its Pod; its Service is how the
    workers find it. Worker ids follow the task's index: tuner0, tuner1, ..."""
    spec, port = layout.stage(name), layout.stage(name).port
    oracle = [{"name": "oracle", "containerPort": port, "protocol": "TCP"}]
    chief_env = [
        _value("KERASTUNER_TUNER_ID", "chief"),
        _value("KERASTUNER_ORACLE_IP", "0.0.0.0"),
        _value("KERASTUNER_ORACLE_PORT", port),
        _value(TUNER_WORKERS, f"{{{{workflow.parameters.{name}-workers}}}}"),
    ]
    worker_env = [
        _value("KERASTUNER_TUNER_ID", "tuner{{inputs.parameters.index}}"),
        _value("KERASTUNER_ORACLE_IP", f"dae-{name}-chief"),
        _value("KERASTUNER_ORACLE_PORT", port),
    ]
    args = _stage_args(name, "--cache")
    chief = _container(args, spec.chief_resources, chief_env, ports=oracle)
    worker = _container(args, spec.resources, worker_env)
    index = {"parameters": [{"name": "index"}]}
    return [
        _template(f"{name}-chief", f"{name}-chief", chief, spec.deadline, _retry(layout)),
        _template(
            f"{name}-worker", f"{name}-worker", worker, spec.deadline, _retry(layout), inputs=index
        ),
    ]


def _multi_worker(layout: Layout, name: str) -> dict:
    """An Indexed Job: stable names (<job>-<index>.<Service>) for TF_CONFIG, all members
    started together, and failed together (backoffLimit 0; exit codes in PERMANENT fail it
    through its podFailurePolicy, which the step's retry tells apart)."""
    spec, workers = layout.stage(name), f"{{{{workflow.parameters.{name}-workers}}}}"
    script = TF_CONFIG.format(service=f"dae-{name}", stage=name, root=ROOT)
    index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    job_name = "metadata.labels['batch.kubernetes.io/job-name']"
    env = [
        _value("RUN_ID", RUN),
        _field("WORKER_INDEX", index),
        _field("JOB_NAME", job_name),
        _value("NUM_WORKERS", workers),
        _value("TF_PORT", spec.port),
    ]
    container = _container(
        [],
        spec.resources,
        env,
        ports=[{"name": "collective", "containerPort": spec.port, "protocol": "TCP"}],
    )
    del container["args"]
    container = (
        {"name": "dae"}
        | container
        | {"image": "{{inputs.parameters.image}}", "command": ["sh", "-c", script]}
    )
    labels = {
        "app.kubernetes.io/name": "dae",
        "app.kubernetes.io/part-of": "dae",
        "app.kubernetes.io/component": f"{name}-worker",
    }
    failure = {
        "action": "FailJob",
        "onExitCodes": {"containerName": "dae", "operator": "In", "values": list(PERMANENT)},
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"generateName": f"dae-{name}-", "labels": labels, "annotations": CHECKOV},
        "spec": {
            "completionMode": "Indexed",
            "completions": 1 << 30,
            "parallelism": 1 << 31,
            "backoffLimit": 0,
            "activeDeadlineSeconds": spec.deadline,
            "podFailurePolicy": {"rules": [failure]},
            "template": {
                "metadata": {"labels": labels, "annotations": CHECKOV},
                "spec": {
                    "subdomain": f"dae-{name}",
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 60,
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(),
                    "containers": [container],
                    "volumes": volumes(config=False),
                },
            },
        },
    }
    manifest = yaml.dump(job, Dumper=_Dumper, sort_keys=False, width=200)
    for number in (str(1 << 30), str(1 << 31)):  # integers Argo fills in before kubectl reads
        manifest = manifest.replace(number, workers)
    resource = {
        "action": "create",
        "setOwnerReference": True,
        "successCondition": "status.completionTime",
        "failureCondition": JOB_FAILED,
        "manifest": manifest,
    }
    return {
        "name": name,
        "metadata": {"labels": {"app.kubernetes.io/component": f"{name}-job"}},
        "activeDeadlineSeconds": str(spec.deadline + 600),
        "retryStrategy": _retry(layout, JOB_TRANSIENT),
        "inputs": {"parameters": [{"name": "image", "value": IMAGE}]},
        "resource": resource,
    }


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
    tasks, templates = [], []
    for i, n in enumerate(DAG):
        name, kind = n.name, layout.stage(n.name).scale_out
        deps = [task for s in _direct(name, ancestors) for task in ends[s]]
        if kind is None:
            templates.append(_first(layout, name) if i == 0 else _single(layout, name))
            tasks.append(_task(name, name, deps))
            ends[name] = [name]
            continue
        templates.append(_probe(layout, name))
        tasks.append(_task(f"{name}-cache", f"{name}-cache", deps))
        when = f"{{{{tasks.{name}-cache.outputs.parameters.result}}}} != cached"
        if kind == "keras-tuner":
            templates += _keras_tuner(layout, name)
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
            templates.append(_multi_worker(layout, name))
            tasks.append(_task(name, name, [f"{name}-cache"], when=when))
            ends[name] = [name]
    sinks = [n.name for n in DAG if not any(n.name in ancestors[o.name] for o in DAG)]
    tasks.append(_task("finish", "finish", [t for s in sinks for t in ends[s]]))
    return tasks, templates


def _task(name: str, template: str, deps: list[str], **extra) -> dict:
    return {"name": name, "template": template, **({"dependencies": deps} if deps else {}), **extra}


def _single(layout: Layout, name: str) -> dict:
    spec = layout.stage(name)
    container = _container(_stage_args(name, "--cache"), spec.resources)
    return _template(name, name, container, spec.deadline, _retry(layout))


def _bookkeeping(layout: Layout) -> list[dict]:
    """`dae runs finish` after the last stages; on failure, `dae runs fail` (retried until
    it is written: even a busy root or a store restarting must not leave the run running)."""
    finish = _container(["runs", "finish", RUN, "--root", ROOT], RUNS)
    reason = ["--reason", "workflow {{workflow.status}}", "--failures", "{{workflow.failures}}"]
    fail = _container(["runs", "fail", RUN, "--root", ROOT, *reason], RUNS)
    record = _retry(layout, None) | {"limit": "5"}
    when = "{{workflow.status}} != Succeeded"
    return [
        _template("finish", "finish", finish, layout.step_deadline, _retry(layout)),
        {
            "name": "exit-handler",
            "steps": [[{"name": "record-failure", "template": "record-failure", "when": when}]],
        },
        _template("record-failure", "record-failure", fail, layout.step_deadline, record),
    ]


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
        # `dae` turns SIGTERM into a clean "failed" record; give it time to write it.
        "podSpecPatch": '{"terminationGracePeriodSeconds": 60}',
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


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:
        return True  # a manifest spells every value out (no &anchors)


def _text(dumper, data: str):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _text)
HEADER = """\
# Generated by `dae argo compile` from pipeline/dag.py, a config and a layout: do not edit.
# Regenerate it after changing either (README, "Running on Kubernetes"); a test fails when it
# differs from what the command produces.
"""


def render(objects: list[dict]) -> str:
    docs = [yaml.dump(o, Dumper=_Dumper, sort_keys=False, width=200) for o in objects]
    return HEADER + "---\n" + "---\n".join(docs)
