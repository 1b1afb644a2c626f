"""What the cluster adds to the DAG (pipeline/argo.py): the layout file that says how big each
stage's Pods are, which stages scale out and how, the deadlines, retries and schedule, and
the objects around the WorkflowTemplate (its config, ServiceAccount, Role, Services, the
CronWorkflow and a first run). Names and paths agree with k8s/base: the `dae` image, the
shared volume `dae-root` at /data/dae-root, the Secret `dae-metadata`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dae.pipeline.argo_kinds import (
    GROUP,
    CronWorkflow,
    CronWorkflowSpec,
    TemplateRef,
    Workflow,
    WorkflowSpec,
    WorkflowTemplate,
)
from dae.pipeline.argo_model import (
    Capabilities,
    ClaimSource,
    ConfigMap,
    ConfigMapProjection,
    ConfigMapSource,
    EmptyDirSource,
    KeyToPath,
    ObjectMeta,
    PodSecurityContext,
    PolicyRule,
    ProjectedSource,
    Role,
    RoleBinding,
    RoleRef,
    SeccompProfile,
    Secret,
    SecurityContext,
    Service,
    ServiceAccount,
    ServiceAccountTokenProjection,
    ServicePort,
    ServiceSpec,
    Spec,
    Subject,
    Volume,
    VolumeProjection,
)
from dae.pipeline.config import Config, ConfigError
from dae.pipeline.dag import STAGES

IMAGE = "dae"
CLAIM = "dae-root"
ROOT = "/data/dae-root"
UID = 10001  # the Dockerfile's USER
TEMPLATE = "dae-pipeline"
ACCOUNT = "dae-workflow"
CONFIG_MAP = "dae-workflow-config"
CRON = "dae-retrain"
FIRST_RUN = "dae-first-run"
SCALE_OUT = {"keras-tuner": 8000, "multi-worker": 2222}  # each kind's port
LABELS = {"app.kubernetes.io/name": "dae", "app.kubernetes.io/component": "workflow"}
SMALL = {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "2Gi"}}


@dataclass(frozen=True)
class StageLayout:
    resources: dict
    deadline: int
    scale_out: str | None = None
    workers: int = 2
    chief_resources: dict = field(default_factory=dict)

    @property
    def port(self) -> int:
        return SCALE_OUT[self.scale_out]


@dataclass(frozen=True)
class Layout:
    schedule: str = "0 3 * * *"
    timezone: str = "Etc/UTC"
    starting_deadline: int = 3600
    history: int = 3
    deadline: int = 7200
    step_deadline: int = 3600
    retries: int = 2
    resources: dict = field(default_factory=lambda: SMALL)
    stages: dict[str, StageLayout] = field(default_factory=dict)

    def stage(self, name: str) -> StageLayout:
        return self.stages.get(name) or StageLayout(self.resources, self.step_deadline)


def _resources(where: str, value: Any) -> dict:
    ok = (
        isinstance(value, dict)
        and set(value) == {"requests", "limits"}
        and all(isinstance(value[k], dict) and set(value[k]) == {"cpu", "memory"} for k in value)
    )
    if not ok:
        raise ConfigError(f"{where}: resources need requests and limits, each cpu and memory")
    return {k: {r: str(v) for r, v in value[k].items()} for k in ("requests", "limits")}


def _positive(where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where} must be a positive integer, not {value!r}")
    return value


def _stage(name: str, raw: Any, top: Layout, where: str) -> StageLayout:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: stage {name} must be a mapping")
    unknown = set(raw) - {"resources", "deadline", "scale_out", "workers", "chief"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} for stage {name}")
    kind = raw.get("scale_out")
    if kind is not None and kind not in SCALE_OUT:
        raise ConfigError(
            f"{where}: stage {name}: unknown scale_out {kind!r} (known: {', '.join(SCALE_OUT)})"
        )
    where = f"{where}: stage {name}"
    if kind != "keras-tuner" and "chief" in raw or kind is None and "workers" in raw:
        raise ConfigError(f"{where}: 'workers' needs a scale_out, 'chief' keras-tuner")
    resources = _resources(where, raw.get("resources", top.resources))
    return StageLayout(
        resources=resources,
        deadline=_positive(f"{where} deadline", raw.get("deadline", top.step_deadline)),
        scale_out=kind,
        workers=_positive(f"{where} workers", raw.get("workers", 2)),
        chief_resources=_resources(f"{where} chief", raw.get("chief", resources)),
    )


def load_layout(path: str | Path | None) -> Layout:
    """The layout file (None: every stage one Pod of the default size, nothing scaled out)."""
    if path is None:
        return Layout()
    where = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read layout file {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"layout file {path} is not valid YAML: {e}".splitlines()[0]) from e
    if not isinstance(raw, dict):
        raise ConfigError(f"layout file {path} must hold a mapping at the top level")
    known = {f for f in Layout.__dataclass_fields__ if f != "stages"} | {"stages"}
    if set(raw) - known:
        raise ConfigError(f"{where}: unknown key(s) {sorted(set(raw) - known)}")
    top = Layout(**{k: v for k, v in raw.items() if k not in ("stages", "resources")})
    for key in ("starting_deadline", "history", "deadline", "step_deadline"):
        _positive(f"{where}: {key}", getattr(top, key))
    if not isinstance(top.retries, int) or top.retries < 0:
        raise ConfigError(f"{where}: retries must be 0 or more, not {top.retries!r}")
    top = Layout(**{**top.__dict__, "resources": _resources(where, raw.get("resources", SMALL))})
    stages = raw.get("stages") or {}
    if not isinstance(stages, dict):
        raise ConfigError(f"{where}: stages must be a mapping of stage names")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"{where}: unknown stage '{unknown[0]}' (stages: {', '.join(STAGES)})")
    parsed = {name: _stage(name, value, top, where) for name, value in stages.items()}
    if STAGES and STAGES[0] in parsed and parsed[STAGES[0]].scale_out:
        raise ConfigError(f"{where}: the first stage, {STAGES[0]}, creates the run: no scale_out")
    return Layout(**{**top.__dict__, "stages": parsed})


# ---- what every Pod shares -------------------------------------------------------------


def hardened() -> SecurityContext:
    return SecurityContext(
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        capabilities=Capabilities(drop=["ALL"]),
        seccomp_profile=SeccompProfile(type="RuntimeDefault"),
    )


def executor_security() -> SecurityContext:
    """Argo's own `init` and `wait` containers, through the podSpecPatch (pipeline/argo.py):
    v3.7.18 gives them the controller ConfigMap's executor securityContext, none by default,
    which Pod Security "restricted" refuses. Not readOnlyRootFilesystem: Argo leaves it off for
    them too (argoproj/argo-workflows#10787)."""
    return SecurityContext(
        allow_privilege_escalation=False,
        run_as_non_root=True,
        capabilities=Capabilities(drop=["ALL"]),
        seccomp_profile=SeccompProfile(type="RuntimeDefault"),
    )


def api_token() -> Volume:
    """The workflow account's token and the cluster's CA for the containers that ask the API
    server themselves (pipeline/kube_api.py): a bound token the kubelet requests and renews."""
    ca = ConfigMapProjection(
        name="kube-root-ca.crt", items=[KeyToPath(key="ca.crt", path="ca.crt")]
    )
    token = ServiceAccountTokenProjection(path="token", expiration_seconds=3600)
    sources = [VolumeProjection(service_account_token=token), VolumeProjection(config_map=ca)]
    return Volume(name="api-token", projected=ProjectedSource(sources=sources))


def pod_security() -> PodSecurityContext:
    return PodSecurityContext(
        run_as_non_root=True,
        run_as_user=UID,
        run_as_group=UID,
        fs_group=UID,
        fs_group_change_policy="OnRootMismatch",
        seccomp_profile=SeccompProfile(type="RuntimeDefault"),
    )


def volumes(config: bool) -> list[Volume]:
    out = [Volume(name="dae-root", persistent_volume_claim=ClaimSource(claim_name=CLAIM))]
    if config:
        out.append(Volume(name="config", config_map=ConfigMapSource(name=CONFIG_MAP)))
    return [*out, Volume(name="tmp", empty_dir=EmptyDirSource(size_limit="2Gi"))]


# ---- the objects around the WorkflowTemplate ----------------------------------------------


def _meta(name: str, **extra) -> ObjectMeta:
    return ObjectMeta(name=name, labels=dict(LABELS), **extra)


def _rbac(layout: Layout) -> list[Spec]:
    """The executor's account (Argo's own containers report through it; the dae containers
    get no token) and what it may do: report results, and create and watch the Jobs of
    multi-worker stages (owned by their workflow), whose watcher reads the workflow and
    deletes its own Job once the workflow is over (pipeline/kube_api.py)."""
    rules = [
        PolicyRule(api_groups=[GROUP], resources=["workflowtaskresults"], verbs=["create", "patch"])
    ]
    if any(s.scale_out == "multi-worker" for s in layout.stages.values()):
        rules += [
            PolicyRule(api_groups=["batch"], resources=["jobs"], verbs=["create", "get", "delete"]),
            PolicyRule(api_groups=[GROUP], resources=["workflows/finalizers"], verbs=["update"]),
            PolicyRule(api_groups=[GROUP], resources=["workflows"], verbs=["get"]),
        ]
    token = {"kubernetes.io/service-account.name": ACCOUNT}
    return [
        ServiceAccount(metadata=_meta(ACCOUNT), automount_service_account_token=False),
        # Argo mounts this token into its executor containers only (Kubernetes 1.24+ makes
        # none by itself); found by its name, <account>.service-account-token.
        Secret(
            type="kubernetes.io/service-account-token",
            metadata=_meta(f"{ACCOUNT}.service-account-token", annotations=token),
        ),
        Role(metadata=_meta(ACCOUNT), rules=rules),
        RoleBinding(
            metadata=_meta(ACCOUNT),
            role_ref=RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=ACCOUNT),
            subjects=[Subject(kind="ServiceAccount", name=ACCOUNT)],
        ),
    ]


def _services(layout: Layout) -> list[Service]:
    """How scaled-out Pods find each other: the tuner chief's oracle behind a Service, the
    training workers by name (<job>-<index>.<Service>, a headless Service)."""
    out = []
    for name, spec in layout.stages.items():
        if spec.scale_out == "keras-tuner":
            component, port = f"{name}-chief", "oracle"
            kind = {"type": "ClusterIP"}
        elif spec.scale_out == "multi-worker":
            component, port = f"{name}-worker", "collective"
            kind = {"cluster_ip": "None", "publish_not_ready_addresses": True}
        else:
            continue
        selector = {"app.kubernetes.io/name": "dae", "app.kubernetes.io/component": component}
        grpc = "grpc" if spec.scale_out == "keras-tuner" else None
        ports = [ServicePort(name=port, app_protocol=grpc, port=spec.port, target_port=port)]
        metadata = ObjectMeta(name=f"dae-{component.removesuffix('-worker')}", labels=selector)
        service_spec = ServiceSpec(**kind, selector=selector, ports=ports)
        out.append(Service(metadata=metadata, spec=service_spec))
    return out


def cluster_objects(config: Config, layout: Layout, template: WorkflowTemplate) -> list[Spec]:
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    config_map = ConfigMap(metadata=_meta(CONFIG_MAP), data={"config.yaml": text})
    cron = CronWorkflow(
        metadata=_meta(CRON),
        spec=CronWorkflowSpec(
            schedules=[layout.schedule],
            timezone=layout.timezone,
            concurrency_policy="Forbid",
            starting_deadline_seconds=layout.starting_deadline,
            successful_jobs_history_limit=layout.history,
            failed_jobs_history_limit=layout.history,
            workflow_spec=WorkflowSpec(workflow_template_ref=TemplateRef(name=TEMPLATE)),
        ),
    )
    # Applying the component starts one run, so that serving gets a first model. Its spec is
    # the template's own, inline: applied in one go, the Workflow may reach Argo's controller
    # before the WorkflowTemplate reaches its informer, and a reference it cannot resolve
    # then fails the run for good (workflow/controller/operator.go, setExecWorkflow).
    first = Workflow(metadata=_meta(FIRST_RUN), spec=template.spec)
    return [config_map, *_rbac(layout), *_services(layout), template, cron, first]
