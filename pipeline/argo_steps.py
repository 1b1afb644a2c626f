"""The templates of one stage's Pods for `dae argo compile` (pipeline/argo.py): its
container, retry and deadline, the cache probe before a scaled-out stage, a Keras Tuner chief
and workers, and the workflow's first step, the API server check (the other way to scale out,
a Job of MultiWorkerMirroredStrategy workers, is pipeline/argo_job.py). Names no stage: the
layout says which stage is which. Built of typed records (pipeline/argo_model.py)."""

from __future__ import annotations

import json

from dae.components.distributed import TUNER_WORKERS
from dae.pipeline.argo_kinds import (
    Arguments,
    Backoff,
    Metadata,
    Parameter,
    RetryStrategy,
    Template,
    ValueFrom,
)
from dae.pipeline.argo_layout import IMAGE, ROOT, Layout, api_token, executor_security, hardened
from dae.pipeline.argo_model import (
    Container,
    ContainerPort,
    EnvVar,
    EnvVarSource,
    FieldRef,
    KeySelector,
    PodSpec,
    Resources,
    VolumeMount,
)
from dae.pipeline.kube_api import TOKEN_DIR

RUN = "{{workflow.name}}"
API_CHECK = "api-check"
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
TINY = Resources(
    requests={"cpu": "10m", "memory": "32Mi"}, limits={"cpu": "100m", "memory": "128Mi"}
)
# No maxDuration (Backoff has none): Argo counts it from a step's first attempt and makes it
# the retry Pod's deadline, so a step failing after it was never retried. Each step has its
# own deadline (activeDeadlineSeconds, from the layout); `cap` bounds the wait between tries.
BACKOFF = Backoff(duration="30s", factor="2", cap="5m")  # IntOrString: a string
# Pod loss (status Error), OOM kills, evictions, SIGTERM: anything but dae's own verdicts.
TRANSIENT = "lastRetry.status == 'Error' || !(lastRetry.exitCode in [{}])".format(
    ", ".join(f"'{code}'" for code in PERMANENT)
)
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


def _env(*extra: EnvVar) -> list[EnvVar]:
    secret = EnvVarSource(secret_key_ref=KeySelector(name="dae-metadata", key="url"))
    return [*extra, EnvVar(name="DAE_METADATA_URL", value_from=secret), value("HOME", "/tmp")]


def value(name: str, text) -> EnvVar:
    return EnvVar(name=name, value=str(text))


def field_env(name: str, path: str) -> EnvVar:
    return EnvVar(name=name, value_from=EnvVarSource(field_ref=FieldRef(field_path=path)))


def pod_container(args, resources: dict, env=(), config=False, ports=()) -> Container:
    """A dae container as every step runs it: the shared root, a scratch /tmp, no token."""
    mounts = [
        VolumeMount(name="dae-root", mount_path=ROOT),
        VolumeMount(name="tmp", mount_path="/tmp"),
    ]
    if config:
        mounts.append(VolumeMount(name="config", mount_path=CONFIG_DIR, read_only=True))
    return Container(
        image=IMAGE,
        image_pull_policy="Always",
        command=["dae"],
        args=list(args),
        env=_env(*env),
        resources=Resources(**resources),
        ports=list(ports) or None,
        security_context=hardened(),
        volume_mounts=mounts,
    )


def retry_strategy(layout: Layout, expression: str | None = TRANSIENT) -> RetryStrategy:
    return RetryStrategy(
        limit=str(layout.retries), retry_policy="Always", backoff=BACKOFF, expression=expression
    )


def step_template(
    name: str,
    component: str,
    container: Container,
    deadline: int,
    retry: RetryStrategy | None,
    **extra,
) -> Template:
    """A container step: its own deadline, its retries, and Argo's `wait` container made to
    meet Pod Security "restricted" (the workflow's podSpecPatch does `init`, which every
    Pod has; `wait` is only in container steps' Pods, and a patch naming a container a Pod
    lacks would add one)."""
    return Template(
        name=name,
        metadata=Metadata(labels={"app.kubernetes.io/component": component}),
        active_deadline_seconds=str(deadline),
        retry_strategy=retry,
        **extra,
        pod_spec_patch=executor_patch(containers=[executor("wait")]),
        container=container,
    )


def executor(name: str) -> Container:
    """Argo's container `name` as a podSpecPatch sees it: the securityContext Pod Security
    "restricted" asks for."""
    return Container(name=name, security_context=executor_security())


def executor_patch(**pod) -> str:
    """A podSpecPatch: JSON that Argo merges into the Pod it builds (strategic merge)."""
    return json.dumps(PodSpec(**pod).to_dict())


def stage_args(name: str, *extra: str) -> list[str]:
    return ["stage", name, "--run", RUN, "--root", ROOT, *extra]


def first_step(layout: Layout, name: str) -> Template:
    """The first stage creates the run from the compiled config, once the store is up."""
    spec = layout.stage(name)
    args = stage_args(name, "--cache", "--create", "--config", f"{CONFIG_DIR}/config.yaml")
    wait = Container(
        name="wait-for-metadata",
        image=IMAGE,
        image_pull_policy="Always",
        command=["python", "-c", WAIT_FOR_METADATA],
        env=_env()[:1],
        resources=TINY,
        security_context=hardened(),
    )
    container = pod_container(args, spec.resources, config=True)
    return step_template(
        name, name, container, spec.deadline, retry_strategy(layout), init_containers=[wait]
    )


def cache_probe(layout: Layout, name: str) -> Template:
    args = stage_args(name, "--cache-only", "--result", RESULT)
    result = Parameter(name="result", value_from=ValueFrom(path=RESULT))
    return step_template(
        f"{name}-cache",
        f"{name}-cache",
        pod_container(args, layout.resources),
        layout.step_deadline,
        retry_strategy(layout),
        outputs=Arguments(parameters=[result]),
    )


def keras_tuner_steps(layout: Layout, name: str) -> list[Template]:
    """The chief serves the oracle on every address of its Pod; its Service is how the
    workers find it. Worker ids follow the task's index: tuner0, tuner1, ..."""
    spec, port = layout.stage(name), layout.stage(name).port
    oracle = [ContainerPort(name="oracle", container_port=port)]
    chief_env = [
        value("KERASTUNER_TUNER_ID", "chief"),
        value("KERASTUNER_ORACLE_IP", "0.0.0.0"),
        value("KERASTUNER_ORACLE_PORT", port),
        value(TUNER_WORKERS, f"{{{{workflow.parameters.{name}-workers}}}}"),
    ]
    worker_env = [
        value("KERASTUNER_TUNER_ID", "tuner{{inputs.parameters.index}}"),
        value("KERASTUNER_ORACLE_IP", f"dae-{name}-chief"),
        value("KERASTUNER_ORACLE_PORT", port),
    ]
    args = stage_args(name, "--cache")
    chief = pod_container(args, spec.chief_resources, chief_env, ports=oracle)
    worker = pod_container(args, spec.resources, worker_env)
    index = Arguments(parameters=[Parameter(name="index")])
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


def api_mounts() -> list[VolumeMount]:
    """The token for pipeline/kube_api.py, and the writable /tmp every container has."""
    token = VolumeMount(name="api-token", mount_path=TOKEN_DIR, read_only=True)
    return [token, VolumeMount(name="tmp", mount_path="/tmp")]


def api_check(layout: Layout) -> Template:
    """The workflow's first step: can the Pods reach the API server (Argo's executor must)?
    One line and exit 1 if not, never retried (pipeline/kube_api.py)."""
    container = Container(
        image=IMAGE,
        image_pull_policy="Always",
        command=["python", "-m", "dae.pipeline.kube_api", "check"],
        resources=TINY,
        security_context=hardened(),
        volume_mounts=api_mounts(),
    )
    return step_template(API_CHECK, API_CHECK, container, 120, None, volumes=[api_token()])
