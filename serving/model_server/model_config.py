"""TF Serving's model server configuration: `--model_config_file` (a ModelServerConfig in
protobuf text format, parsed with tensorflow-serving-api's own message) and
`--monitoring_config_file` (a MonitoringConfig), validated as TF Serving's ServerCore does."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath


class ServerConfigError(ValueError):
    """A configuration TF Serving would refuse; one line for the user."""


@dataclass(frozen=True)
class VersionPolicy:
    """FileSystemStoragePathSourceConfig.ServableVersionPolicy: which versions on disk are
    aspired (wanted in service)."""

    kind: str = "latest"  # latest | all | specific
    count: int = 1  # latest: how many
    versions: frozenset[int] = frozenset()  # specific: which

    def aspired(self, on_disk: list[int]) -> list[int]:
        """`on_disk` ascending -> the versions to serve, ascending."""
        if self.kind == "all":
            return list(on_disk)
        if self.kind == "specific":
            return [v for v in on_disk if v in self.versions]
        return on_disk[-self.count :] if on_disk else []

    def describe(self) -> str:
        if self.kind == "specific":
            return f"specific {sorted(self.versions)}"
        return "all" if self.kind == "all" else f"latest {self.count}"


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: Path
    policy: VersionPolicy = VersionPolicy()
    labels: dict[str, int] = field(default_factory=dict)


def single_model(name: str, base_path: str | Path, num_versions: int = 1) -> ModelConfig:
    """What TF Serving builds from --model_name and --model_base_path."""
    return ModelConfig(name, Path(base_path).expanduser(), VersionPolicy("latest", num_versions))


def _policy(proto) -> VersionPolicy:
    choice = proto.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        return VersionPolicy("specific", versions=frozenset(proto.specific.versions))
    if choice == "latest":  # num_versions 0 means 1 (file_system_storage_path_source.cc)
        return VersionPolicy("latest", max(proto.latest.num_versions, 1))
    return VersionPolicy()


def _parse(text: str, message):
    """`message` filled from protobuf text format, or TF Serving's ParseProtoTextFile error."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as e:
        kind = message.DESCRIPTOR.full_name
        raise ServerConfigError(f"Error parsing text-format {kind}: {e}") from None


def parse_model_server_config(text: str) -> list[ModelConfig]:
    """The models of a ModelServerConfig, or ServerConfigError with TF Serving's wording."""
    from tensorflow_serving.config import model_server_config_pb2

    proto = _parse(text, model_server_config_pb2.ModelServerConfig())
    if proto.HasField("custom_model_config"):
        raise ServerConfigError(
            "custom_model_config is not supported: list models in model_config_list"
        )
    models, seen = [], set()
    for config in proto.model_config_list.config:
        name = config.name
        if not name:
            raise ServerConfigError("a model in model_config_list has no name")
        if name in seen:
            raise ServerConfigError(f"Illegal to list model {name} multiple times in config list")
        seen.add(name)
        platform = config.model_platform or ("tensorflow" if config.model_type == 1 else "")
        if config.model_platform and config.model_type:
            raise ServerConfigError(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                f"ModelServerConfig::model_platform, model name is {name}"
            )
        if not platform:
            raise ServerConfigError(
                "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                f"ModelServerConfig::model_platform, model name is {name}"
            )
        if platform != "tensorflow":
            raise ServerConfigError(
                f"model {name}: platform '{platform}' is not served (tensorflow only)"
            )
        if "://" in config.base_path:
            raise ServerConfigError(f"model {name}: base_path {config.base_path}: only local paths")
        if not Path(config.base_path).is_absolute():
            raise ServerConfigError(
                f"Expected model {name} to have an absolute path or URI; "
                f"got base_path()={config.base_path}"
            )
        policy = _policy(config.model_version_policy)
        if policy.kind == "specific" and not policy.versions:
            raise ServerConfigError(f"model {name}: the specific version policy lists no versions")
        labels = dict(config.version_labels)
        models.append(ModelConfig(name, Path(config.base_path), policy, labels))
    return models


def read_model_server_config(path: str | Path) -> list[ModelConfig]:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", e)
        raise ServerConfigError(f"cannot read model config file {path}: {why}") from None
    return parse_model_server_config(text)


def _monitoring_message():
    """TF Serving's MonitoringConfig (config/monitoring_config.proto), which the serving API
    package does not ship, declared from its two fields."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="dae/monitoring_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    prometheus = fdp.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    fdp.message_type.add(name="MonitoringConfig").field.add(
        name="prometheus_config",
        number=1,
        type=F.TYPE_MESSAGE,
        label=F.LABEL_OPTIONAL,
        type_name=".tensorflow.serving.PrometheusConfig",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
    )


def prometheus_path(path: str | Path | None) -> str | None:
    """The Prometheus endpoint a --monitoring_config_file asks for (None: not exposed).
    Without the file, dae exposes metrics at TF Serving's default path anyway."""

    if path is None:
        return PROMETHEUS_PATH
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", e)
        raise ServerConfigError(f"cannot read monitoring config file {path}: {why}") from None
    message = _parse(text, _monitoring_message()())
    prometheus = message.prometheus_config
    if not prometheus.enable:
        return None
    where = prometheus.path or PROMETHEUS_PATH
    if not where.startswith("/"):
        raise ServerConfigError(f"prometheus_config path must start with '/', got {where}")
    return where
