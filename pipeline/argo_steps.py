"""The templates of one stage's Pods for `dae argo compile` (pipeline/argo.py): its
container, retry and deadline, the cache probe before a scaled-out stage, and the two ways to
scale out: a Keras Tuner chief and workers, or an Indexed Job of MultiWorkerMirroredStrategy
workers created by a resource step. Names no stage: the layout says which stage is which."""

from __future__ import annotations

import json

import yaml

from dae.components.distributed import TUNER_WORKERS
from dae.pipeline.argo_layout import (
    ACCOUNT,
    IMAGE,
    ROOT,
    Layout,
    api_token,
    executor_security,
    hardened,
    pod_security,
    volumes,
)
from dae.pipeline.kube_api import TOKEN_DIR

RUN = "{{workflow.name}}"
API_CHECK = "api-check"
WORKFLOW_LABEL = "workflows.argoproj.io/workflow"  # Argo's own label of a workflow's Pods
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
TINY = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "100m", "memory": "128Mi"}}
# No maxDuration: Argo counts it from a step's first attempt and makes it the retry Pod's
# deadline, so a step failing after it was never retried. Each step has its own deadline
# (activeDeadlineSeconds, from the layout) instead; `cap` bounds the wait between attempts.
BACKOFF = {"duration": "30s", "factor": "2", "cap": "5m"}  # IntOrString: a string
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


def pod_container(args, resources, env=(), config=False, ports=()) -> dict:
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


def retry_strategy(layout: Layout, expression: str | None = TRANSIENT) -> dict:
    retry = {"limit": str(layout.retries), "retryPolicy": "Always", "backoff": BACKOFF}
    return retry | ({"expression": expression} if expression else {})


def step_template(
    name: str, component: str, container: dict, deadline: int, retry: dict | None, **extra
) -> dict:
    """A container step: its own deadline, its retries, and Argo's `wait` container made to
    meet Pod Security "restricted" (the workflow's podSpecPatch does `init`, which every
    Pod has; `wait` is only in container steps' Pods, and a patch naming a container a Pod
    lacks would add one)."""
    labels = {"app.kubernetes.io/component": component}
    return {
        "name": name,
        "metadata": {"labels": labels},
        "activeDeadlineSeconds": str(deadline),
        **({"retryStrategy": retry} if retry else {}),
        **extra,
        "podSpecPatch": executor_patch("containers", "wait"),
        "container": container,
    }


def executor_patch(field: str, name: str, **pod) -> str:
    """A podSpecPatch (JSON, merged by Argo into the Pod it builds) giving Argo's container
    `name` the securityContext Pod Security "restricted" asks for."""
    patch = pod | {field: [{"name": name, "securityContext": executor_security()}]}
    return json.dumps(patch)


def stage_args(name: str, *extra: str) -> list[str]:
    return ["stage", name, "--run", RUN, "--root", ROOT, *extra]


def first_step(layout: Layout, name: str) -> dict:
    """The first stage creates the run from the compiled config, once the store is up."""
    spec = layout.stage(name)
    args = stage_args(name, "--cache", "--create", "--config", f"{CONFIG_DIR}/config.yaml")
    wait = {
        "name": "wait-for-metadata",
        "image": IMAGE,
        "imagePullPolicy": "Always",
        "command": ["python", "-c", WAIT_FOR_METADATA],
        "env": _env()[:1],
        "resources": TINY,
        "securityContext": hardened(),
    }
    container = pod_container(args, spec.resources, config=True)
    return step_template(
        name, name, container, spec.deadline, retry_strategy(layout), initContainers=[wait]
    )


def cache_probe(layout: Layout, name: str) -> dict:
    args = stage_args(name, "--cache-only", "--result", RESULT)
    outputs = {"parameters": [{"name": "result", "valueFrom": {"path": RESULT}}]}
    container = pod_container(args, layout.resources)
    return step_template(
        f"{name}-cache",
        f"{name}-cache",
        container,
        layout.step_deadline,
        retry_strategy(layout),
        outputs=outputs,
    )


def keras_tuner_steps(layout: Layout, name: str) -> list[dict]:
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
    args = stage_args(name, "--cache")
    chief = pod_container(args, spec.chief_resources, chief_env, ports=oracle)
    worker = pod_container(args, spec.resources, worker_env)
    index = {"parameters": [{"name": "index"}]}
    return [
        step_template(
            f"{name}-chief", f"{name}-chief", chief, spec.deadline, retry_strategy(layout)
        ),
        step_template(
            f"{name}-worker",
            f"{name}-worker",
            worker,
            spec.deadline,
            retry_strategy(layout),
            inputs=index,
        ),
    ]


def multi_worker_step(layout: Layout, name: str) -> dict:
    """An Indexed Job: stable names (<job>-<index>.<Service>) for TF_CONFIG, all members
    started together, and failed together (backoffLimit 0; exit codes in PERMANENT fail it
    through its podFailurePolicy, which the step's retry tells apart). It carries its
    workflow's name, is owned by the workflow, and each worker has a watcher beside it that
    deletes the Job once the workflow is stopped, terminated or past its deadline."""
    spec, workers = layout.stage(name), Parameter(f"workflow.parameters.{name}-workers")
    script = TF_CONFIG.format(service=f"dae-{name}", stage=name, root=ROOT)
    index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    job_name = _field("JOB_NAME", "metadata.labels['batch.kubernetes.io/job-name']")
    env = [
        _value("RUN_ID", RUN),
        _field("WORKER_INDEX", index),
        job_name,
        _value("NUM_WORKERS", f"{{{{{workers}}}}}"),
        _value("TF_PORT", spec.port),
    ]
    container = pod_container(
        [],
        spec.resources,
        env,
        ports=[{"name": "collective", "containerPort": spec.port, "protocol": "TCP"}],
    )
    del container["args"]
    image = "{{inputs.parameters.image}}"
    container = {"name": "dae"} | container | {"image": image, "command": ["sh", "-c", script]}
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
        "metadata": {
            "generateName": f"dae-{name}-",
            # Not on its Pods: Argo's controller takes Pods with this label for its own.
            "labels": labels | {WORKFLOW_LABEL: RUN},
            "annotations": CHECKOV,
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": workers,
            "parallelism": workers,
            "backoffLimit": 0,
            "activeDeadlineSeconds": spec.deadline,
            "podFailurePolicy": {"rules": [failure]},
            "template": {
                "metadata": {"labels": labels, "annotations": CHECKOV},
                "spec": {
                    "subdomain": f"dae-{name}",
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 60,
                    "serviceAccountName": ACCOUNT,
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(),
                    "initContainers": [_watcher(image, job_name)],
                    "containers": [container],
                    "volumes": [*volumes(config=False), api_token()],
                },
            },
        },
    }
    resource = {
        "action": "create",
        "setOwnerReference": True,
        "successCondition": "status.completionTime",
        "failureCondition": JOB_FAILED,
        "manifest": yaml.dump(job, Dumper=Dumper, sort_keys=False, width=200),
    }
    return {
        "name": name,
        "metadata": {"labels": {"app.kubernetes.io/component": f"{name}-job"}},
        "activeDeadlineSeconds": str(spec.deadline + 600),
        "retryStrategy": retry_strategy(layout, JOB_TRANSIENT),
        "inputs": {"parameters": [{"name": "image", "value": IMAGE}]},
        "resource": resource,
    }


def _watcher(image: str, job_name: dict) -> dict:
    """A native sidecar (an init container that keeps running, Kubernetes 1.29+): it ends
    with the worker, and deletes the Job if the workflow ends first (pipeline/kube_api.py)."""
    env = [_field("NAMESPACE", "metadata.namespace"), _value("WORKFLOW", RUN), job_name]
    return {
        "name": "workflow-watch",
        "image": image,
        "imagePullPolicy": "Always",
        "restartPolicy": "Always",
        "command": ["python", "-m", "dae.pipeline.kube_api", "watch", "$(JOB_NAME)"],
        "env": env,
        "resources": TINY,
        "securityContext": hardened(),
        "volumeMounts": [{"name": "api-token", "mountPath": TOKEN_DIR, "readOnly": True}],
    }


def api_check(layout: Layout) -> dict:
    """The workflow's first step: can the Pods reach the API server (Argo's executor must)?
    One line and exit 1 if not, never retried (pipeline/kube_api.py)."""
    container = {
        "image": IMAGE,
        "imagePullPolicy": "Always",
        "command": ["python", "-m", "dae.pipeline.kube_api", "check"],
        "resources": TINY,
        "securityContext": hardened(),
        "volumeMounts": [{"name": "api-token", "mountPath": TOKEN_DIR, "readOnly": True}],
    }
    template = step_template(API_CHECK, API_CHECK, container, 120, None)
    return template | {"volumes": [api_token()]}


class Parameter(str):
    """An Argo parameter where the Kubernetes schema wants a number (a Job's completions):
    written bare, `{{workflow.parameters.x}}`, so that the manifest Argo fills in holds the
    number itself."""


class Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:
        return True  # a manifest spells every value out (no &anchors)

    def choose_scalar_style(self):
        return "" if self.event.tag == _PARAMETER else super().choose_scalar_style()

    def process_tag(self):
        if isinstance(self.event, yaml.ScalarEvent) and self.event.tag == _PARAMETER:
            self.prepared_tag = None
            return
        super().process_tag()


def _text(dumper, data: str):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_PARAMETER = "!argo-parameter"
Dumper.add_representer(str, _text)
Dumper.add_representer(
    Parameter, lambda dumper, data: dumper.represent_scalar(_PARAMETER, f"{{{{{data}}}}}")
)
