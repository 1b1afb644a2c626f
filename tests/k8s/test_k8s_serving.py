"""TF Serving and KServe as the overlays configure them on a real cluster: thread pools that
follow the CPU limit, Prometheus metrics, batching that splits large requests, replicas spread
over nodes, a rollout deadline that outlasts the first training, and the InferenceService keys
KServe reads today."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pod_fields
import pytest
import yaml
from k8s_support import (
    OVERLAYS,
    VARIANTS,
    add_component,
    allows,
    by_kind,
    copy_tree,
    find,
    guide,
    labels_match,
    pod_template,
    pod_templates,
    render,
)

# ---- TF Serving (the Deployment, or KServe's predictor) ------------------------------------------


def _serving_pod(objects) -> tuple[dict, dict, int, int]:
    """(pod template, serving container, REST port, gRPC port), whichever serves."""
    for name, pod in pod_templates(objects):
        if name == "Deployment/dae-serving":
            (c,) = [c for c in pod["spec"]["containers"] if c["name"] == "tf-serving"]
            return pod, c, 8501, 8500
        if name.startswith("InferenceService/"):
            (c,) = pod["spec"]["containers"]
            return pod, c, 8080, 9000  # the kserve-tensorflow-serving runtime's own flags
    raise AssertionError("no serving Pod")


def _quantity(q: str) -> float:
    return float(q[:-1]) / 1000 if str(q).endswith("m") else float(q)


def _resolve(container: dict, arg: str) -> str:
    """Kubernetes' $(VAR) expansion: a literal value, or a resourceFieldRef's ceil(limit /
    divisor), whose divisor for cpu the API server accepts only as 1 or 1m."""

    def value(m):
        env = pod_fields.env(container)[m.group(1)]
        if "value" in env:
            return env["value"]
        ref = env["valueFrom"]["resourceFieldRef"]
        assert ref["containerName"] == container["name"] and ref["resource"] == "limits.cpu"
        divisor = ref.get("divisor", "1")
        assert divisor in ("1", "1m"), f"{m.group(1)}: the API server refuses cpu divisor {divisor}"
        limit = _quantity(container["resources"]["limits"]["cpu"])
        return str(math.ceil(limit / _quantity(divisor)))

    return re.sub(r"\$\((\w+)\)", value, arg)


def _flags(container: dict) -> dict[str, str]:
    out = {}
    for arg in container.get("args", []):
        name, _, value = arg.partition("=")
        assert name not in out, f"{name} given twice"
        out[name] = _resolve(container, value)
    return out


def _config_file(objects, pod: dict, container: dict, path: str) -> str:
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[str(Path(path).parent)]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    return find(objects, "ConfigMap", volume["configMap"]["name"])["data"][Path(path).name]


def _text_proto(text: str) -> dict:
    """TF Serving's text-format configs, flat: `a { value: 1 }` -> {a: 1},
    `a { b: true c: "x" }` -> {a.b: True, a.c: "x"}."""
    text = re.sub(r"#.*", "", text)
    out = {}

    def scalar(raw: str):
        if raw.startswith('"'):
            return raw.strip('"')
        return {"true": True, "false": False}[raw] if raw in ("true", "false") else int(raw)

    for name, body in re.findall(r"(\w+)\s*\{([^}]*)\}", text):
        for key, raw in re.findall(r"(\w+)\s*:\s*(\"[^\"]*\"|\S+)", body):
            out[name if key == "value" else f"{name}.{key}"] = scalar(raw)
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_tf_serving_thread_pools_follow_the_cpu_limit(rendered, variant):
    _, container, _, _ = _serving_pod(rendered[variant])
    flags = _flags(container)
    cores = _quantity(container["resources"]["limits"]["cpu"])
    assert int(flags["--tensorflow_intra_op_parallelism"]) == math.ceil(cores)
    assert int(flags["--tensorflow_inter_op_parallelism"]) == math.ceil(cores)
    assert int(flags["--rest_api_num_threads"]) == math.ceil(4 * cores), "TF Serving's 4 per CPU"


@pytest.mark.parametrize("variant", VARIANTS)
def test_tf_serving_exports_prometheus_metrics(rendered, variant):
    objects = rendered[variant]
    pod, container, rest, _ = _serving_pod(objects)
    flags = _flags(container)
    config = _text_proto(_config_file(objects, pod, container, flags["--monitoring_config_file"]))
    assert config["prometheus_config.enable"] is True
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(rest), "served on the REST port"
    assert annotations["prometheus.io/path"] == config["prometheus_config.path"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_tf_serving_splits_requests_larger_than_a_batch(rendered, variant):
    """As the embedded server: a request over the batch size is split into several model
    calls. With splitting on, max_batch_size is the largest request TF Serving accepts, and
    it must fit the queue (shared_batch_scheduler refuses a task larger than its capacity)."""
    objects = rendered[variant]
    pod, container, _, _ = _serving_pod(objects)
    flags = _flags(container)
    assert flags["--enable_batching"] == "true"
    params = _text_proto(_config_file(objects, pod, container, flags["--batching_parameters_file"]))
    assert params["enable_large_batch_splitting"] is True
    execution, largest = params["max_execution_batch_size"], params["max_batch_size"]
    assert 1 <= execution <= largest <= params["max_enqueued_batches"] * execution


@pytest.mark.parametrize("variant", VARIANTS)
def test_serving_replicas_spread_over_nodes(rendered, variant):
    pod, _, _, _ = _serving_pod(rendered[variant])
    labels = pod["metadata"]["labels"]
    (by_node,) = [
        t
        for t in pod["spec"]["topologySpreadConstraints"]
        if t["topologyKey"] == "kubernetes.io/hostname"
    ]
    assert by_node["maxSkew"] == 1 and by_node["whenUnsatisfiable"] == "DoNotSchedule"
    assert by_node["nodeTaintsPolicy"] == "Honor", "tainted nodes are no empty domains"
    assert labels_match(by_node["labelSelector"], labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_rollout_deadline_outlasts_the_first_training(rendered, overlay):
    """The first rollout waits for the first run (dev: Job `dae-run-once`; prod: Workflow
    `dae-first-run`) to push a model: the Deployment must not be declared failed
    (ProgressDeadlineExceeded) while it legitimately waits."""
    objects = rendered[overlay]
    deployment = find(objects, "Deployment", "dae-serving")
    (container,) = [c for c in pod_template(deployment)["spec"]["containers"]]
    startup = (
        container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"]
    )
    if overlay == "dev":
        first_run = find(objects, "Job", "dae-run-once")["spec"]["activeDeadlineSeconds"]
    else:
        first_run = find(objects, "Workflow", "dae-first-run")["spec"]["activeDeadlineSeconds"]
    assert deployment["spec"]["progressDeadlineSeconds"] > first_run + startup


# ---- KServe --------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["dev+kserve", "prod+kserve"])
def test_inference_service_uses_the_keys_kserve_reads(rendered, variant):
    objects = rendered[variant]
    isvc = find(objects, "InferenceService", "denoiser")
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"  # KServe >= 0.16
    assert annotations["serving.kserve.io/autoscalerClass"] == "hpa"
    # Read by no current KServe release (the HPA reconciler reads spec.predictor.scaleMetric
    # and scaleTarget; v0.14 was the last to validate these annotations).
    for legacy in (
        "serving.kserve.io/metric",
        "serving.kserve.io/metrics",
        "serving.kserve.io/targetUtilizationPercentage",
    ):
        assert legacy not in annotations, legacy
    predictor = isvc["spec"]["predictor"]
    assert predictor["scaleMetric"] == "cpu" and 1 <= predictor["scaleTarget"] <= 100
    # Off: in Standard mode KServe's switch would point scrapers at a queue-proxy port.
    assert predictor["annotations"]["serving.kserve.io/enable-prometheus-scraping"] == "false"
    # The overlay's own patches still reach it (they run after the component).
    hpa_min = {"dev+kserve": 1, "prod+kserve": 3}[variant]
    assert predictor["minReplicas"] == hpa_min


@pytest.mark.parametrize("variant", ["dev+kserve", "prod+kserve"])
def test_inference_service_exposes_rest_and_grpc(rendered, variant):
    objects = rendered[variant]
    pod, container, rest, grpc = _serving_pod(objects)
    ports = container["ports"]
    # KServe's Service maps port 80 to the first container port and exposes the others as
    # themselves, appProtocol h2c for a name holding "grpc".
    assert ports[0]["containerPort"] == rest
    assert [p["containerPort"] for p in ports if "grpc" in p["name"]] == [grpc]
    policy = find(objects, "NetworkPolicy", "denoiser-predictor")
    policies = [policy]
    labels = pod["metadata"]["labels"]
    for port in (rest, grpc):
        assert allows(policies, "Ingress", labels, {"labels": {"any": "client"}}, port)
    assert not allows(policies, "Ingress", labels, {"labels": {"any": "client"}}, 8500)
    # The first Pod waits for a pushed version (so the kubelet never creates the subPath).
    (wait,) = pod["spec"]["initContainers"]
    isvc = find(objects, "InferenceService", "denoiser")
    claim, sub = isvc["spec"]["predictor"]["model"]["storageUri"][len("pvc://") :].split("/", 1)
    mount = {m["name"]: m for m in wait["volumeMounts"]}
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] in mount]
    assert volume["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
    assert mount[volume["name"]].get("readOnly") is True
    assert f"{mount[volume['name']]['mountPath']}/{sub}/[0-9]*" in wait["command"][2]


def test_the_documented_kserve_form_renders_in_each_overlay(tmp_path):
    """The README's opt-in, line for line, on copies of both overlays (conftest renders the
    same way; this pins that the overlays keep a `components:` list to add to)."""
    for overlay in OVERLAYS:
        k8s = copy_tree(tmp_path / overlay)
        before = yaml.safe_load((k8s / "overlays" / overlay / "kustomization.yaml").read_text())
        objects = render(add_component(k8s, f"overlays/{overlay}", "components/kserve"))
        after = yaml.safe_load((k8s / "overlays" / overlay / "kustomization.yaml").read_text())
        assert after["components"] == before.get("components", []) + ["../../components/kserve"]
        assert by_kind(objects, "InferenceService") and not by_kind(objects, "Deployment")
    readme = " ".join(guide().split())
    assert "add `../../components/kserve` to the overlay's `components:` list" in readme
