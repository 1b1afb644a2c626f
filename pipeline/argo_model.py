"""The Kubernetes and Argo Workflows objects `dae argo compile` writes, as typed records: a
misspelt field is a TypeError where the object is built, a value of the wrong type a
TypeError naming the field, and nothing is spliced into YAML text afterwards.

Fields are those of Kubernetes 1.34 and Argo Workflows v3.7.18 that the compiler uses (Argo's
pkg/apis/workflow/v1alpha1/*_types.go), in the order they are written out; a field left None
is left out. Hera's models (hera 7.1.0, `hera.workflows.models`) were the first choice, but
they follow Argo v4.0.5's schema, drop a misspelt field without a word (pydantic's extra
"ignore"), have no Job or PodSpec, and cost 0.55 s to import; these records cost nothing.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any, ClassVar

record = dataclass(frozen=True, kw_only=True)


class Placeholder(str):
    """An Argo parameter where the Kubernetes schema wants a number (a Job's completions):
    written bare, `{{workflow.parameters.x}}`, so that the manifest Argo fills in holds the
    number itself (pipeline/argo_steps.py's Dumper)."""


def key(name: str) -> dict:
    """A field written under another name than its camelCase (clusterIP, podGC)."""
    return {"key": name}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _accepts(hint: Any, value: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_accepts(item, v) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is Any:
        return True
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


class Spec:
    """What every record shares: a type check when it is built, and its dict for YAML."""

    API_VERSION: ClassVar[str | None] = None
    KIND: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is not None and not _accepts(hints[f.name], value):
                raise TypeError(
                    f"{type(self).__name__}.{f.name}: {value!r} is not a {hints[f.name]}"
                )

    def to_dict(self) -> dict:
        out = {"apiVersion": self.API_VERSION, "kind": self.KIND} if self.KIND else {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is not None:
                out[f.metadata.get("key", _camel(f.name))] = _plain(value)
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, Spec):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ---- Kubernetes --------------------------------------------------------------------------


@record
class ObjectMeta(Spec):
    name: str | None = None
    generate_name: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


@record
class KeySelector(Spec):
    name: str
    key: str


@record
class FieldRef(Spec):
    field_path: str


@record
class EnvVarSource(Spec):
    secret_key_ref: KeySelector | None = None
    field_ref: FieldRef | None = None


@record
class EnvVar(Spec):
    name: str
    value: str | None = None
    value_from: EnvVarSource | None = None


@record
class Resources(Spec):
    requests: dict[str, str]
    limits: dict[str, str]


@record
class Capabilities(Spec):
    drop: list[str]


@record
class SeccompProfile(Spec):
    type: str


@record
class SecurityContext(Spec):
    allow_privilege_escalation: bool | None = None
    read_only_root_filesystem: bool | None = None
    run_as_non_root: bool | None = None
    capabilities: Capabilities | None = None
    seccomp_profile: SeccompProfile | None = None


@record
class PodSecurityContext(Spec):
    run_as_non_root: bool | None = None
    run_as_user: int | None = None
    run_as_group: int | None = None
    fs_group: int | None = None
    fs_group_change_policy: str | None = None
    seccomp_profile: SeccompProfile | None = None


@record
class ContainerPort(Spec):
    name: str
    container_port: int
    protocol: str = "TCP"


@record
class VolumeMount(Spec):
    name: str
    mount_path: str
    read_only: bool | None = None


@record
class Container(Spec):
    name: str | None = None  # None: Argo names a template's container `main`
    image: str | None = None
    image_pull_policy: str | None = None
    restart_policy: str | None = None  # Always: a native sidecar (an init container)
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[EnvVar] | None = None
    resources: Resources | None = None
    ports: list[ContainerPort] | None = None
    security_context: SecurityContext | None = None
    volume_mounts: list[VolumeMount] | None = None


@record
class ClaimSource(Spec):
    claim_name: str


@record
class ConfigMapSource(Spec):
    name: str


@record
class EmptyDirSource(Spec):
    size_limit: str | None = None


@record
class KeyToPath(Spec):
    key: str
    path: str


@record
class ServiceAccountTokenProjection(Spec):
    path: str
    expiration_seconds: int | None = None


@record
class ConfigMapProjection(Spec):
    name: str
    items: list[KeyToPath] | None = None


@record
class VolumeProjection(Spec):
    service_account_token: ServiceAccountTokenProjection | None = None
    config_map: ConfigMapProjection | None = None


@record
class ProjectedSource(Spec):
    sources: list[VolumeProjection]


@record
class Volume(Spec):
    name: str
    persistent_volume_claim: ClaimSource | None = None
    config_map: ConfigMapSource | None = None
    empty_dir: EmptyDirSource | None = None
    projected: ProjectedSource | None = None


@record
class PodSpec(Spec):
    subdomain: str | None = None
    restart_policy: str | None = None
    termination_grace_period_seconds: int | None = None
    service_account_name: str | None = None
    automount_service_account_token: bool | None = None
    security_context: PodSecurityContext | None = None
    init_containers: list[Container] | None = None
    containers: list[Container] | None = None
    volumes: list[Volume] | None = None


@record
class PodTemplateSpec(Spec):
    metadata: ObjectMeta
    spec: PodSpec


@record
class OnExitCodes(Spec):
    container_name: str
    operator: str
    values: list[int]


@record
class PodFailurePolicyRule(Spec):
    action: str
    on_exit_codes: OnExitCodes


@record
class PodFailurePolicy(Spec):
    rules: list[PodFailurePolicyRule]


@record
class JobSpec(Spec):
    completion_mode: str
    completions: int | Placeholder
    parallelism: int | Placeholder
    backoff_limit: int
    active_deadline_seconds: int
    pod_failure_policy: PodFailurePolicy
    template: PodTemplateSpec


@record
class Job(Spec):
    API_VERSION, KIND = "batch/v1", "Job"
    metadata: ObjectMeta
    spec: JobSpec


@record
class ConfigMap(Spec):
    API_VERSION, KIND = "v1", "ConfigMap"
    metadata: ObjectMeta
    data: dict[str, str]


@record
class ServiceAccount(Spec):
    API_VERSION, KIND = "v1", "ServiceAccount"
    metadata: ObjectMeta
    automount_service_account_token: bool


@record
class Secret(Spec):
    API_VERSION, KIND = "v1", "Secret"
    type: str
    metadata: ObjectMeta


@record
class PolicyRule(Spec):
    api_groups: list[str]
    resources: list[str]
    verbs: list[str]


@record
class Role(Spec):
    API_VERSION, KIND = "rbac.authorization.k8s.io/v1", "Role"
    metadata: ObjectMeta
    rules: list[PolicyRule]


@record
class RoleRef(Spec):
    api_group: str
    kind: str
    name: str


@record
class Subject(Spec):
    kind: str
    name: str


@record
class RoleBinding(Spec):
    API_VERSION, KIND = "rbac.authorization.k8s.io/v1", "RoleBinding"
    metadata: ObjectMeta
    role_ref: RoleRef
    subjects: list[Subject]


@record
class ServicePort(Spec):
    name: str
    app_protocol: str | None = None
    port: int
    target_port: str
    protocol: str = "TCP"


@record
class ServiceSpec(Spec):
    type: str | None = None
    cluster_ip: str | None = field(default=None, metadata=key("clusterIP"))
    publish_not_ready_addresses: bool | None = None
    selector: dict[str, str]
    ports: list[ServicePort]


@record
class Service(Spec):
    API_VERSION, KIND = "v1", "Service"
    metadata: ObjectMeta
    spec: ServiceSpec
