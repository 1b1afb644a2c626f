"""The manifests agree with each other and with the pipeline: serving reads what the pusher
writes, Services / probes / HPA / PDB / NetworkPolicies point at what exists, every dae
container runs a command the CLI accepts on a config the pipeline accepts, and every Pod is
hardened (the workflow's scaled-out steps: test_k8s_workflow.py)."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pod_fields
import pytest
import yaml
from k8s_support import (
    K8S,
    OVERLAYS,
    REPO,
    SAMPLE_WORKFLOW,
    VARIANTS,
    by_kind,
    containers,
    find,
    is_dae,
    labels_match,
    pod_template,
    pod_templates,
)

from dae.pipeline.config import Config, load_config
from dae.pipeline.dag import STAGES

ROOT = "/data/dae-root"  # --root of every dae container: the shared volume's mount path
CLAIM = "dae-root"
CONFIG_MOUNT = "/etc/dae"
SUBCOMMANDS = {"run", "stage", "runs", "serve", "data", "denoise"}
SAMPLE_RUN_ID = SAMPLE_WORKFLOW  # a workflow's run is named after it
# The Secret the README's command creates (not in the manifests: it holds the password).
SECRET_KEYS = {("dae-metadata", "url"), ("dae-metadata", "password")}
# The official postgres image runs as its own postgres user; everything else as 10001.
POSTGRES_UID = 999


def _volume(pod: dict, name: str) -> dict:
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    assert name in volumes, f"no volume {name}"
    return volumes[name]


def _flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    assert len(values) == 1, f"{name} given {len(values)} times in {args}"
    return values[0]


def _serving(objects):
    deployment = find(objects, "Deployment", "dae-serving")
    pod = pod_template(deployment)
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "tf-serving"]
    return deployment, pod, container


def _config_path_in_repo(objects) -> Path:
    """The pipeline config the ConfigMap holds, as a file (the ConfigMap's own bytes)."""
    (cm,) = [c for n, c in by_kind(objects, "ConfigMap").items() if n.startswith("dae-config-")]
    assert cm["data"]["config.yaml"] == (K8S / "base" / "config.yaml").read_text()
    return K8S / "base" / "config.yaml"


# ---- the pipeline config -------------------------------------------------------------------


def test_configmap_config_is_the_default_but_for_the_image_data_paths_and_precision():
    """And a fixed training precision: `auto` would pick per node."""
    mine = load_config(K8S / "base" / "config.yaml", "default", []).to_dict()
    default = load_config(REPO / "configs" / "default.yaml", "default", []).to_dict()
    for key in ("data_dir", "manual_dir"):
        assert mine["data"].pop(key).startswith("/opt/dae/tensorflow_datasets")
        default["data"].pop(key)
    assert mine["model"].pop("precision") != "auto" and default["model"].pop("precision")
    assert mine == default, "k8s/base/config.yaml changes more than the data paths"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_reads_what_the_pipeline_pushes(rendered, overlay):
    objects = rendered[overlay]
    config = load_config(_config_path_in_repo(objects), "default", [])
    model = config.push.model_name
    _, pod, container = _serving(objects)
    args = pod_fields.args(container)
    assert container["image"].startswith("tensorflow/serving:")
    assert args[0] == "tensorflow_model_server"
    assert _flag(args, "--model_name") == model
    base = _flag(args, "--model_base_path")
    assert base == f"{ROOT}/serving/{model}", "TF Serving must poll the pusher's target"
    # ... on the same claim, mounted at the pipeline's root (read-only: serving never writes).
    mount = pod_fields.mounts(container)[ROOT]
    assert mount.get("readOnly") is True
    assert _volume(pod, mount["name"])["persistentVolumeClaim"]["claimName"] == CLAIM
    assert _flag(args, "--enable_batching") == "true"
    assert int(_flag(args, "--file_system_poll_wait_seconds")) > 0
    # The first push is awaited before the server starts.
    (wait,) = pod["spec"]["initContainers"]
    assert f"{base}/[0-9]*" in " ".join(pod_fields.args(wait))
    assert pod_fields.mounts(wait)[ROOT]["name"] == mount["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_batching_parameters_parse_and_are_mounted(rendered, overlay):
    from dae.serving.model_server.batching import parse_batching_parameters

    objects = rendered[overlay]
    _, pod, container = _serving(objects)
    path = Path(_flag(pod_fields.args(container), "--batching_parameters_file"))
    mount = pod_fields.mounts(container)[str(path.parent)]
    cm_name = _volume(pod, mount["name"])["configMap"]["name"]
    text = find(objects, "ConfigMap", cm_name)["data"][path.name]
    params = parse_batching_parameters(text)
    assert params.max_batch_size >= 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ports_and_service_line_up(rendered, overlay):
    objects = rendered[overlay]
    deployment, pod, container = _serving(objects)
    model = _flag(pod_fields.args(container), "--model_name")
    ports = pod_fields.ports(pod)
    rest = int(_flag(pod_fields.args(container), "--rest_api_port"))
    grpc = int(_flag(pod_fields.args(container), "--port"))
    assert {ports["http"], ports["grpc"]} == {rest, grpc} and ports["http"] == rest
    for probe in ("startupProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == f"/v1/models/{model}", probe
        assert ports[get["port"]] == rest, f"{probe} must use the REST port"
    # Liveness: the gRPC port accepts connections (test_k8s_serving says why).
    assert ports[container["livenessProbe"]["tcpSocket"]["port"]] == grpc
    service = find(objects, "Service", "dae-serving")
    assert labels_match(service["spec"]["selector"], pod["metadata"]["labels"])
    assert {ports[p["targetPort"]] for p in service["spec"]["ports"]} == {rest, grpc}
    assert {p["port"] for p in service["spec"]["ports"]} == {8500, 8501}
    # The Deployment's selector picks its own Pods.
    assert labels_match(deployment["spec"]["selector"], pod["metadata"]["labels"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_pdb_and_network_policy_target_the_serving_pods(rendered, overlay):
    objects = rendered[overlay]
    deployment, pod, _ = _serving(objects)
    labels = pod["metadata"]["labels"]
    hpa = find(objects, "HorizontalPodAutoscaler", "dae-serving")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    pdb = find(objects, "PodDisruptionBudget", "dae-serving")
    assert labels_match(pdb["spec"]["selector"], labels)
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    policy = find(objects, "NetworkPolicy", "dae-serving")
    assert labels_match(policy["spec"]["podSelector"], labels)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    admitted = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert admitted == {8500, 8501}
    # No other policy opens anything else on these Pods.
    for other in by_kind(objects, "NetworkPolicy").values():
        if other is not policy:
            assert not labels_match(other["spec"]["podSelector"], labels), other["metadata"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_service_selects_pods_on_declared_ports(rendered, variant):
    objects = rendered[variant]
    pods = [pod for _, pod in pod_templates(objects)]
    for name, service in by_kind(objects, "Service").items():
        selected = [
            p for p in pods if labels_match(service["spec"]["selector"], p["metadata"]["labels"])
        ]
        assert selected, f"Service {name} selects no Pod"
        for pod in selected:
            ports = pod_fields.ports(pod)
            for port in service["spec"]["ports"]:
                assert port.get("targetPort", port["port"]) in ports, (name, port)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_reference_exists(rendered, variant):
    objects = rendered[variant]
    configmaps = by_kind(objects, "ConfigMap")
    claims = by_kind(objects, "PersistentVolumeClaim")
    templates = {
        f"StatefulSet/{n}": [
            t["metadata"]["name"] for t in s["spec"].get("volumeClaimTemplates", [])
        ]
        for n, s in by_kind(objects, "StatefulSet").items()
    }
    for name, pod in pod_templates(objects):
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        claim_templates = templates.get(name, [])
        for c in containers(pod):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or m["name"] in claim_templates, (
                    f"{name}: mount of unknown volume {m['name']}"
                )
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["key"] in configmaps[ref["name"]]["data"], (name, ref)
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:  # the one Secret the README's command creates, with its two keys
                    assert (ref["name"], ref["key"]) in SECRET_KEYS, (name, ref)
        for v in volumes.values():
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps, (name, v)
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, (name, v)
            if "secret" in v:
                for item in v["secret"]["items"]:
                    assert (v["secret"]["secretName"], item["key"]) in SECRET_KEYS, (name, v)


# ---- hardening -------------------------------------------------------------------------------


def _resources_ok(c: dict) -> bool:
    res = c.get("resources", {})
    return all(k in res.get(kind, {}) for kind in ("requests", "limits") for k in ("cpu", "memory"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_is_hardened(rendered, variant):
    for name, pod in pod_templates(rendered[variant]):
        spec = pod["spec"]
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, name
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        if "InferenceService" not in name and "FlinkDeployment" not in name:
            assert spec.get("automountServiceAccountToken") is False, name
        writable = {
            v["name"]
            for v in spec.get("volumes", [])
            if "emptyDir" in v or "persistentVolumeClaim" in v
        }
        for c in containers(pod):
            where = f"{name} container {c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert not sc.get("privileged"), where
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            if c.get("image", "").startswith("postgres:"):
                assert uid == POSTGRES_UID, f"{where}: the image's postgres user"
            else:
                assert uid and uid >= 1000, f"{where}: run as a fixed non-root uid"
            if c["name"] != "flink-main-container":  # the operator sets the Flink resources
                assert _resources_ok(c), f"{where}: needs cpu and memory requests and limits"
            if not c["name"].startswith("wait-for-"):  # init containers that only wait
                tmp = pod_fields.mounts(c).get("/tmp")
                assert tmp and tmp["name"] in writable, f"{where}: /tmp must be a writable volume"
            for image in [c.get("image")] if c.get("image") else []:
                tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
                assert tag and tag != "latest", f"{where}: pin the image tag ({image})"


# ---- the commands the dae containers run -------------------------------------------------------


def _dae_argvs(container: dict) -> list[list[str]]:
    """The argv after `dae` of each command a dae-image container runs (none for the Beam
    worker pool)."""
    command, args = container.get("command"), container.get("args", [])
    if command is None:  # the image's ENTRYPOINT ["dae"]
        return [list(args)]
    if command == ["/opt/apache/beam/boot"]:
        assert args == ["--worker_pool"]
        return []
    if command[:2] == ["python", "-c"]:  # wait-for-metadata: a socket, no dae command
        assert "DAE_METADATA_URL" in command[2] and not args
        return []
    if command[:3] == ["python", "-m", "dae.pipeline.kube_api"]:  # the API checks, no dae command
        importlib.import_module(command[2])
        argv = command[3:] + list(args)
        assert argv == ["check"] or (len(argv) == 2 and argv[0] == "watch"), argv
        return []
    if command[:2] == ["sh", "-c"]:
        lines = [ln.strip() for ln in command[2].strip().splitlines()]
        assert lines[-1].startswith("exec dae "), f"a dae container's script must exec dae: {lines}"
        calls = [shlex.split(ln) for ln in lines if re.match(r"(exec )?dae ", ln)]
        return [call[call.index("dae") + 1 :] for call in calls]
    assert command[0] == "dae", f"unexpected command {command}"
    return [command[1:] + list(args)]


def _substitute(argv: list[str], env: dict[str, dict]) -> list[str]:
    """Kubernetes' $(VAR), the shell's "$VAR" for the env this test can resolve, and Argo's
    {{workflow.name}} (the run a workflow works on)."""
    values = {"RUN_ID": SAMPLE_RUN_ID}
    out = []
    for a in argv:
        for name in env:
            if name in values:
                a = a.replace(f"$({name})", values[name]).replace(f"${name}", values[name])
        a = a.replace("{{workflow.name}}", SAMPLE_WORKFLOW)
        assert "$" not in a, f"unresolved variable in {a}"
        out.append(a)
    return out


def _workflow_config(objects) -> Config:
    """The config compiled into the workflow (its first step creates the run from it)."""
    cm = find(objects, "ConfigMap", "dae-workflow-config")
    return Config.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_dae_container_runs_a_dae_command_the_cli_accepts(rendered, variant):
    from dae.cli import _parser
    from dae.components.transform import pipeline_options
    from dae.pipeline.config import apply_overrides

    objects = rendered[variant]
    config_file = _config_path_in_repo(objects)
    seen = set()
    for name, pod in pod_templates(objects):
        for c in containers(pod):
            if not is_dae(c):
                continue
            if c["name"] == "wait-for-metadata":
                assert c["command"][:2] == ["python", "-c"], name
            for argv in _dae_argvs(c):
                assert argv and argv[0] in SUBCOMMANDS, (
                    f"{name}: `dae {argv[:1]}` is no dae subcommand"
                )
                argv = _substitute(argv, pod_fields.env(c))
                try:
                    args = _parser().parse_args(argv)
                except SystemExit:
                    pytest.fail(f"{name}: `dae {shlex.join(argv)}` is refused by dae's CLI")
                seen.add(argv[0] if argv[0] != "stage" else f"stage {argv[1]}")
                assert args.root == ROOT, name
                mounts = pod_fields.mounts(c)
                volume = _volume(pod, mounts[ROOT]["name"])
                assert volume["persistentVolumeClaim"]["claimName"] == CLAIM, name
                assert not mounts[ROOT].get("readOnly"), f"{name}: the pipeline writes its root"
                if args.command == "run":
                    assert Path(args.config).parent == Path(CONFIG_MOUNT)
                    cm = _volume(pod, mounts[CONFIG_MOUNT]["name"])["configMap"]["name"]
                    assert cm.startswith("dae-config-")
                    config = load_config(config_file, args.profile, args.overrides)
                elif args.command == "stage":
                    # A workflow's stage: the run's config (compiled into the workflow, which
                    # its first step mounts and creates the run from) plus --set.
                    recorded = _workflow_config(objects)
                    if args.create:
                        assert args.config == f"{CONFIG_MOUNT}/config.yaml" and not args.profile
                        cm = _volume(pod, mounts[CONFIG_MOUNT]["name"])["configMap"]["name"]
                        assert cm == "dae-workflow-config"
                    config = apply_overrides(recorded, args.overrides)
                else:
                    assert args.command == "runs" and args.run_id == SAMPLE_WORKFLOW, argv
                    continue
                pipeline_options(config.beam)  # Beam accepts the runner and every option
                if args.command == "stage":
                    assert args.run_id == SAMPLE_WORKFLOW, f"{name}: works on the workflow's run"
    if variant.startswith("dev"):
        assert seen == {"run"}
    else:  # every stage of the DAG, and the run's end
        assert seen == {f"stage {s}" for s in STAGES} | {"runs"}


def test_cronjob_and_one_off_job(rendered):
    for overlay in ("dev",):  # prod runs the pipeline through Argo (test_k8s_argo)
        objects = rendered[overlay]
        cron = find(objects, "CronJob", "dae-retrain")
        spec = cron["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["startingDeadlineSeconds"] > 0
        assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
        assert spec["timeZone"]
        job = spec["jobTemplate"]["spec"]
        assert job["backoffLimit"] >= 0 and job["activeDeadlineSeconds"] > 0
        once = find(objects, "Job", "dae-run-once")["spec"]
        assert once["backoffLimit"] >= 0 and once["activeDeadlineSeconds"] > 0
        assert pod_fields.args(pod_template(cron)["spec"]["containers"][0]) == pod_fields.args(
            once["template"]["spec"]["containers"][0]
        ), "the one-off Job runs what the schedule runs"
    assert find(rendered["dev"], "CronJob", "dae-retrain")["spec"]["suspend"] is True
    assert not by_kind(rendered["prod"], "CronJob") and not by_kind(rendered["prod"], "Job")


def test_kserve_serves_the_same_versions(rendered):
    for variant in ("dev+kserve", "prod+kserve"):
        objects = rendered[variant]
        config = load_config(_config_path_in_repo(objects), "default", [])
        isvc = find(objects, "InferenceService", config.push.model_name)  # name = model name
        storage = isvc["spec"]["predictor"]["model"]["storageUri"]
        assert storage == f"pvc://{CLAIM}/serving/{config.push.model_name}"
        assert re.fullmatch(r"\d+\.\d+\.\d+", isvc["spec"]["predictor"]["model"]["runtimeVersion"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_is_covered_by_a_network_policy(rendered, variant):
    objects = rendered[variant]
    policies = by_kind(objects, "NetworkPolicy").values()
    for name, pod in pod_templates(objects):
        labels = pod["metadata"]["labels"]
        assert any(
            labels_match(p["spec"]["podSelector"], labels)
            and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
            for p in policies
        ), f"{name} accepts any inbound traffic"
