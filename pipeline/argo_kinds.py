"""Argo Workflows' kinds as typed records (pipeline/argo_model.py says how): the fields of
v3.7.18's pkg/apis/workflow/v1alpha1 that `dae argo compile` writes, each spelt as there and
also valid in v4. Backoff has no maxDuration on purpose: Argo counts it from a step's first
attempt and makes it the retry Pod's deadline (issue 24, defect 4)."""

from __future__ import annotations

from dataclasses import field

from dae.pipeline.argo_model import (
    Container,
    ObjectMeta,
    PodSecurityContext,
    Spec,
    Volume,
    key,
    record,
)

GROUP = "argoproj.io"
ARGO = f"{GROUP}/v1alpha1"


@record
class ValueFrom(Spec):
    path: str


@record
class Parameter(Spec):
    name: str
    value: str | None = None
    value_from: ValueFrom | None = None
    description: str | None = None


@record
class Arguments(Spec):
    parameters: list[Parameter]


@record
class Backoff(Spec):
    duration: str
    factor: str
    cap: str | None = None


@record
class RetryStrategy(Spec):
    limit: str
    retry_policy: str
    backoff: Backoff
    expression: str | None = None


@record
class Metadata(Spec):
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


@record
class ResourceTemplate(Spec):
    action: str
    set_owner_reference: bool | None = None
    success_condition: str | None = None
    failure_condition: str | None = None
    manifest: str


@record
class Sequence(Spec):
    count: str


@record
class DAGTask(Spec):
    name: str
    template: str
    dependencies: list[str] | None = None
    when: str | None = None
    with_sequence: Sequence | None = None
    arguments: Arguments | None = None


@record
class DAGTemplate(Spec):
    tasks: list[DAGTask]


@record
class WorkflowStep(Spec):
    name: str
    template: str
    when: str | None = None


@record
class Template(Spec):
    name: str
    metadata: Metadata | None = None
    active_deadline_seconds: str | None = None  # IntOrString
    retry_strategy: RetryStrategy | None = None
    inputs: Arguments | None = None
    outputs: Arguments | None = None
    init_containers: list[Container] | None = None
    pod_spec_patch: str | None = None
    container: Container | None = None
    volumes: list[Volume] | None = None
    resource: ResourceTemplate | None = None
    dag: DAGTemplate | None = None
    steps: list[list[WorkflowStep]] | None = None


@record
class ExecutorConfig(Spec):
    service_account_name: str


@record
class Mutex(Spec):
    name: str


@record
class Synchronization(Spec):
    mutexes: list[Mutex]


@record
class PodGC(Spec):
    strategy: str


@record
class TTLStrategy(Spec):
    seconds_after_success: int | None = None
    seconds_after_failure: int | None = None


@record
class TemplateRef(Spec):
    name: str


@record
class WorkflowSpec(Spec):
    entrypoint: str | None = None
    on_exit: str | None = None
    arguments: Arguments | None = None
    service_account_name: str | None = None
    automount_service_account_token: bool | None = None
    executor: ExecutorConfig | None = None
    active_deadline_seconds: int | None = None
    synchronization: Synchronization | None = None
    pod_metadata: Metadata | None = None
    pod_spec_patch: str | None = None
    pod_gc: PodGC | None = field(default=None, metadata=key("podGC"))
    ttl_strategy: TTLStrategy | None = None
    security_context: PodSecurityContext | None = None
    volumes: list[Volume] | None = None
    templates: list[Template] | None = None
    workflow_template_ref: TemplateRef | None = None


@record
class WorkflowTemplate(Spec):
    API_VERSION, KIND = ARGO, "WorkflowTemplate"
    metadata: ObjectMeta
    spec: WorkflowSpec


@record
class Workflow(Spec):
    API_VERSION, KIND = ARGO, "Workflow"
    metadata: ObjectMeta
    spec: WorkflowSpec


@record
class CronWorkflowSpec(Spec):
    schedules: list[str]
    timezone: str
    concurrency_policy: str
    starting_deadline_seconds: int
    successful_jobs_history_limit: int
    failed_jobs_history_limit: int
    workflow_spec: WorkflowSpec


@record
class CronWorkflow(Spec):
    API_VERSION, KIND = ARGO, "CronWorkflow"
    metadata: ObjectMeta
    spec: CronWorkflowSpec
