"""The second way to scale a stage out (pipeline/argo.py): an Indexed Job of
MultiWorkerMirroredStrategy workers that a resource step creates and waits for, and the YAML
that writes it into the step (Argo fills parameters into the text before kubectl reads it).

A collective cannot take a replacement member: the Job fails as a whole at the first lost
worker (its controller stops the others) and the step's retry starts them all again. The Job
must not outlive its workflow: it carries the workflow's name, is owned by the workflow
(setOwnerReference: deleting the workflow deletes it), and a watcher beside each worker
deletes it once the workflow is stopped, terminated or past its deadline. Argo v3.7.18 does
neither by itself: a resource step's Pod is only signalled on shutdown (exec_control.go), and
on terminate no exit handler runs (operator.go), so the Job would run on for up to its own
deadline, writing to the shared root the next run needs.
"""

from __future__ import annotations

import dataclasses

import yaml

from dae.pipeline.argo_kinds import Arguments, Metadata, Parameter, ResourceTemplate, Template
from dae.pipeline.argo_layout import (
    ACCOUNT,
    IMAGE,
    ROOT,
    Layout,
    api_token,
    hardened,
    pod_security,
    volumes,
)
from dae.pipeline.argo_model import (
    Container,
    ContainerPort,
    EnvVar,
    Job,
    JobSpec,
    ObjectMeta,
    OnExitCodes,
    Placeholder,
    PodFailurePolicy,
    PodFailurePolicyRule,
    PodSpec,
    PodTemplateSpec,
)
from dae.pipeline.argo_steps import (
    CHECKOV,
    PERMANENT,
    RUN,
    TINY,
    api_mounts,
    field_env,
    pod_container,
    retry_strategy,
    value,
)

WORKFLOW_LABEL = "workflows.argoproj.io/workflow"  # Argo's own label of a workflow's Pods
# A Job that failed for a lost or killed worker (not for a worker's exit code in PERMANENT,
# nor for its deadline). The resource step's own Pod lost is not retried: its Job may live on.
JOB_FAILED = (
    "status.conditions.0.reason in (DeadlineExceeded,PodFailurePolicy),"
    "status.conditions.0.reason in (BackoffLimitExceeded)"
)
JOB_TRANSIENT = "lastRetry.message contains 'BackoffLimitExceeded'"
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


def multi_worker_step(layout: Layout, name: str) -> Template:
    """An Indexed Job: stable names (<job>-<index>.<Service>) for TF_CONFIG, all members
    started together, and failed together (backoffLimit 0; exit codes in PERMANENT fail it
    through its podFailurePolicy, which the step's retry tells apart)."""
    spec, workers = layout.stage(name), Placeholder(f"workflow.parameters.{name}-workers")
    image = "{{inputs.parameters.image}}"
    job_name = field_env("JOB_NAME", "metadata.labels['batch.kubernetes.io/job-name']")
    env = [
        value("RUN_ID", RUN),
        field_env(
            "WORKER_INDEX", "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        ),
        job_name,
        value("NUM_WORKERS", f"{{{{{workers}}}}}"),
        value("TF_PORT", spec.port),
    ]
    ports = [ContainerPort(name="collective", container_port=spec.port)]
    script = TF_CONFIG.format(service=f"dae-{name}", stage=name, root=ROOT)
    worker = dataclasses.replace(
        pod_container([], spec.resources, env, ports=ports),
        name="dae",
        image=image,
        command=["sh", "-c", script],
        args=None,
    )
    labels = {
        "app.kubernetes.io/name": "dae",
        "app.kubernetes.io/part-of": "dae",
        "app.kubernetes.io/component": f"{name}-worker",
    }
    exit_codes = OnExitCodes(container_name="dae", operator="In", values=list(PERMANENT))
    pod = PodSpec(
        subdomain=f"dae-{name}",
        restart_policy="Never",
        termination_grace_period_seconds=60,
        service_account_name=ACCOUNT,
        automount_service_account_token=False,
        security_context=pod_security(),
        init_containers=[_watcher(image, job_name)],
        containers=[worker],
        volumes=[*volumes(config=False), api_token()],
    )
    job = Job(
        # The workflow's name on the Job, not on its Pods: Argo's controller takes Pods with
        # that label for its own.
        metadata=ObjectMeta(
            generate_name=f"dae-{name}-", labels=labels | {WORKFLOW_LABEL: RUN}, annotations=CHECKOV
        ),
        spec=JobSpec(
            completion_mode="Indexed",
            completions=workers,
            parallelism=workers,
            backoff_limit=0,
            active_deadline_seconds=spec.deadline,
            pod_failure_policy=PodFailurePolicy(
                rules=[PodFailurePolicyRule(action="FailJob", on_exit_codes=exit_codes)]
            ),
            template=PodTemplateSpec(
                metadata=ObjectMeta(labels=labels, annotations=CHECKOV), spec=pod
            ),
        ),
    )
    resource = ResourceTemplate(
        action="create",
        set_owner_reference=True,
        success_condition="status.completionTime",
        failure_condition=JOB_FAILED,
        manifest=yaml.dump(job.to_dict(), Dumper=Dumper, sort_keys=False, width=200),
    )
    return Template(
        name=name,
        metadata=Metadata(labels={"app.kubernetes.io/component": f"{name}-job"}),
        active_deadline_seconds=str(spec.deadline + 600),
        retry_strategy=retry_strategy(layout, JOB_TRANSIENT),
        inputs=Arguments(parameters=[Parameter(name="image", value=IMAGE)]),
        resource=resource,
    )


def _watcher(image: str, job_name: EnvVar) -> Container:
    """A native sidecar (an init container that keeps running, Kubernetes 1.29+): it ends
    with the worker, and deletes the Job if the workflow ends first (pipeline/kube_api.py)."""
    return Container(
        name="workflow-watch",
        image=image,
        image_pull_policy="Always",
        restart_policy="Always",
        command=["python", "-m", "dae.pipeline.kube_api", "watch", "$(JOB_NAME)"],
        env=[field_env("NAMESPACE", "metadata.namespace"), value("WORKFLOW", RUN), job_name],
        resources=TINY,
        security_context=hardened(),
        volume_mounts=api_mounts(),
    )


class Dumper(yaml.SafeDumper):
    """Manifests as YAML: every value spelt out (no &anchors), text with newlines as blocks,
    and a Placeholder bare (`completions: {{workflow.parameters.train-workers}}`)."""

    def ignore_aliases(self, data) -> bool:
        return True

    def choose_scalar_style(self):
        return "" if self.event.tag == _PLACEHOLDER else super().choose_scalar_style()

    def process_tag(self):
        if isinstance(self.event, yaml.ScalarEvent) and self.event.tag == _PLACEHOLDER:
            self.prepared_tag = None
            return
        super().process_tag()


def _text(dumper, data: str):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_PLACEHOLDER = "!argo-placeholder"
Dumper.add_representer(str, _text)
Dumper.add_representer(
    Placeholder, lambda dumper, data: dumper.represent_scalar(_PLACEHOLDER, f"{{{{{data}}}}}")
)
