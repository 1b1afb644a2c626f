"""Each overlay renders (as it is, and with the KServe component added as the README says), to
the objects we expect, and every object is schema-valid: Kubernetes kinds against the OpenAPI
schemas kubernetes-validate ships (offline), custom resources (FlinkDeployment,
InferenceService) against their operators' released CRDs (tests/k8s/crds), as strictly as
`kubectl apply` checks them, Argo's (WorkflowTemplate, CronWorkflow, Workflow) against Argo
Workflows' own JSON schema, and all against what the operators require beyond the schema.
The Pods a workflow makes and the Job it creates are validated as Kubernetes objects too."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
from argo_rules import argo_errors
from k8s_support import (
    CRDS,
    NAMESPACES,
    REPO,
    VARIANTS,
    argo_pods,
    by_kind,
    crd_errors,
    embedded_jobs,
    find,
    guide,
    labels_match,
    pod_templates,
)

# The newest Kubernetes whose schemas kubernetes-validate ships, and the oldest we support
# (backoffLimitPerIndex and podFailurePolicy need 1.29+; CronJob timeZone 1.27).
KUBERNETES_VERSIONS = ("1.29", "1.37")

BASE = {
    ("Namespace", None),
    ("ConfigMap", "dae-config"),
    ("ConfigMap", "dae-tfserving"),
    ("PersistentVolumeClaim", "dae-root"),
    ("Deployment", "dae-serving"),
    ("Service", "dae-serving"),
    ("HorizontalPodAutoscaler", "dae-serving"),
    ("PodDisruptionBudget", "dae-serving"),
    ("NetworkPolicy", "dae-serving"),
    ("NetworkPolicy", "dae-batch-egress"),
}
CRONJOB = {
    ("CronJob", "dae-retrain"),
    ("Job", "dae-run-once"),
    ("NetworkPolicy", "dae-batch-no-ingress"),
}
ARGO = {
    ("ConfigMap", "dae-workflow-config"),
    ("ServiceAccount", "dae-workflow"),
    ("Secret", "dae-workflow.service-account-token"),
    ("Role", "dae-workflow"),
    ("RoleBinding", "dae-workflow"),
    ("Service", "dae-tune-chief"),
    ("Service", "dae-train"),
    ("WorkflowTemplate", "dae-pipeline"),
    ("CronWorkflow", "dae-retrain"),
    ("Workflow", "dae-first-run"),
    ("NetworkPolicy", "dae-workflow-no-ingress"),
    ("NetworkPolicy", "dae-tune-chief"),
    ("NetworkPolicy", "dae-tune-worker-egress"),
    ("NetworkPolicy", "dae-train"),
    ("NetworkPolicy", "dae-workflow-egress-apiserver"),
}
POSTGRES = {
    ("Service", "dae-postgres"),
    ("StatefulSet", "dae-postgres"),
    ("NetworkPolicy", "dae-postgres"),
    ("NetworkPolicy", "dae-batch-egress-metadata"),
}
FLINK = {
    ("ServiceAccount", "dae-flink"),
    ("Role", "dae-flink"),
    ("RoleBinding", "dae-flink"),
    ("FlinkDeployment", "dae-flink"),
    ("NetworkPolicy", "dae-flink"),
    ("NetworkPolicy", "dae-transform-egress-flink"),
    ("NetworkPolicy", "dae-flink-taskmanager-egress"),
}
TF_SERVING = {
    ("Deployment", "dae-serving"),
    ("Service", "dae-serving"),
    ("HorizontalPodAutoscaler", "dae-serving"),
    ("PodDisruptionBudget", "dae-serving"),
    ("NetworkPolicy", "dae-serving"),
}
KSERVE = {
    ("InferenceService", "denoiser"),
    ("NetworkPolicy", "denoiser-predictor"),
    ("PodDisruptionBudget", "denoiser-predictor"),
}
EXPECTED = {
    "dev": BASE | POSTGRES | CRONJOB,
    "prod": BASE | POSTGRES | ARGO | FLINK,
    "dev+kserve": (BASE - TF_SERVING) | POSTGRES | CRONJOB | KSERVE,
    "prod+kserve": (BASE - TF_SERVING) | POSTGRES | ARGO | FLINK | KSERVE,
}
CUSTOM = {
    "flink.apache.org/v1beta1": {"FlinkDeployment"},
    "serving.kserve.io/v1beta1": {"InferenceService"},
    "argoproj.io/v1alpha1": {"WorkflowTemplate", "CronWorkflow", "Workflow"},
}


def _key(obj: dict) -> tuple[str, str | None]:
    name = obj["metadata"]["name"]
    if obj["kind"] == "Namespace":
        return ("Namespace", None)
    if obj["kind"] == "ConfigMap":  # generated names carry a content hash
        name = re.sub(r"-[a-z0-9]{10}$", "", name)
    return (obj["kind"], name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_overlay_renders_the_expected_objects(rendered, variant):
    objects = rendered[variant]
    keys = [_key(o) for o in objects]
    assert len(keys) == len(set(keys)), "duplicate objects"
    assert set(keys) == EXPECTED[variant]
    namespace = NAMESPACES[variant.split("+")[0]]
    assert (
        find(objects, "Namespace", namespace)["metadata"]["labels"][
            "pod-security.kubernetes.io/enforce"
        ]
        == "restricted"
    )
    for o in objects:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == namespace, _key(o)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_objects_validate_against_the_kubernetes_schema(rendered, variant, version):
    assert version <= kubernetes_validate.utils.latest_version()
    for obj in rendered[variant]:
        if obj["apiVersion"] in CUSTOM:
            assert obj["kind"] in CUSTOM[obj["apiVersion"]]
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, version, strict=True)
            continue  # test_custom_resources_validate_against_their_crds
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{_key(obj)} invalid for Kubernetes {version} at {path}: {e.message}")
    # The Jobs the workflow's resource steps create, as Argo fills them in.
    for job in embedded_jobs(rendered[variant]):
        try:
            kubernetes_validate.validate(
                {**job, "metadata": {**job["metadata"], "name": "x"}}, version, strict=True
            )
        except kubernetes_validate.ValidationError as e:
            pytest.fail(
                f"the workflow's Job is invalid for Kubernetes {version} at "
                f"{'.'.join(map(str, e.path))}: {e.message}"
            )


@pytest.mark.parametrize("variant", VARIANTS)
def test_custom_resources_validate_against_their_crds(rendered, variant):
    """FlinkDeployment against the Flink Kubernetes Operator 1.15.0's CRD, InferenceService
    against KServe 0.20.0's, Argo's kinds against Argo Workflows 3.7.18's JSON schema: an
    unknown or misplaced field fails, as `kubectl apply` would."""
    seen = set()
    for obj in rendered[variant]:
        if obj["apiVersion"] in CUSTOM:
            argo = obj["apiVersion"].startswith("argoproj.io/")
            errors = argo_errors(obj) if argo else crd_errors(obj)
            assert not errors, f"{_key(obj)} violates its schema:\n" + "\n".join(errors)
            seen.add(obj["kind"])
    expected = CUSTOM["argoproj.io/v1alpha1"] | {"FlinkDeployment"}
    expected = expected if variant.startswith("prod") else set()
    assert seen == expected | ({"InferenceService"} if "kserve" in variant else set())


def test_workflow_pods_validate_as_pods(rendered):
    """Each step's Pod as Argo makes it (its container as `main`) is a valid Pod."""
    (template,) = by_kind(rendered["prod"], "WorkflowTemplate").values()
    pods = list(argo_pods(template))
    assert len(pods) >= 12
    for name, pod in pods:
        _validate_pod(pod, name)


def test_crd_validation_rejects_unknown_fields(rendered):
    isvc = find(rendered["prod+kserve"], "InferenceService", "denoiser")
    bad = {**isvc, "spec": {"predictor": {**isvc["spec"]["predictor"], "replicas": 3}}}
    assert any("replicas" in e for e in crd_errors(bad))
    flink = find(rendered["prod"], "FlinkDeployment", "dae-flink")
    bad = {**flink, "spec": {**flink["spec"], "serviceAccountName": "x"}}
    assert any("serviceAccountName" in e for e in crd_errors(bad))
    template = find(rendered["prod"], "WorkflowTemplate", "dae-pipeline")
    bad = {**template, "spec": {**template["spec"], "mutex": {"name": "x"}}}  # Argo < 3.6's
    assert any("mutex" in e for e in argo_errors(bad))
    first, *rest = template["spec"]["templates"]
    bad = {**template, "spec": {**template["spec"], "templates": [{**first, "retries": 2}, *rest]}}
    assert any("retries" in e for e in argo_errors(bad))


def _validate_pod(template: dict, where: str) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata") or {}}
    pod["metadata"] = {"name": "template", **pod["metadata"]}
    pod["spec"] = template["spec"]
    try:
        kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[-1], strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{where}: invalid Pod template at {'.'.join(map(str, e.path))}: {e.message}")


def test_flink_deployment_has_what_the_operator_requires(rendered):
    flink = find(rendered["prod"], "FlinkDeployment", "dae-flink")
    spec = flink["spec"]
    assert re.fullmatch(r"flink:\d+\.\d+\.\d+-scala_2\.12-java\d+", spec["image"])
    # The operator's FlinkVersion enum; Beam 2.77 publishes job servers for 1.19 - 2.2.
    assert spec["flinkVersion"] in {"v1_19", "v1_20", "v2_0", "v2_1", "v2_2"}
    assert (
        spec["image"].split(":")[1].startswith(spec["flinkVersion"][1:].replace("_", ".") + ".")
    ), "the image's Flink release must be flinkVersion"
    # Native mode: the JobManager creates the TaskManager Pods with this account, which the
    # component must bring (the operator's chart makes one only in its own namespace).
    account = find(rendered["prod"], "ServiceAccount", spec["serviceAccount"])
    assert account["metadata"]["name"] == spec["serviceAccount"]
    assert spec.get("mode", "native") == "native"
    assert "job" not in spec, "a session cluster: jobs are submitted to it"
    for role in ("jobManager", "taskManager"):
        resource = spec[role]["resource"]
        assert float(resource["cpu"]) > 0
        assert re.fullmatch(r"\d+(m|Mi|Gi|g)", str(resource["memory"]))
        assert spec[role].get("replicas", 1) >= 1
    for key, value in spec["flinkConfiguration"].items():
        assert isinstance(value, str), f"flinkConfiguration.{key} must be a string"
    for name, template in pod_templates([flink]):
        _validate_pod(template, name)


@pytest.mark.parametrize("variant", ["dev+kserve", "prod+kserve"])
def test_inference_service_has_what_kserve_requires(rendered, variant):
    objects = rendered[variant]
    isvc = find(objects, "InferenceService", "denoiser")
    predictor = isvc["spec"]["predictor"]
    # Exactly one model spec: the v1beta1 `model` with its format, and where it lives.
    frameworks = {"tensorflow", "pytorch", "sklearn", "xgboost", "onnx", "triton", "model"}
    assert set(predictor) & frameworks == {"model"}
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "tensorflow"
    assert re.fullmatch(r"pvc://[a-z0-9-]+/.+", model["storageUri"])
    claim = model["storageUri"][len("pvc://") :].split("/")[0]
    find(objects, "PersistentVolumeClaim", claim)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    for name, template in pod_templates([isvc]):
        _validate_pod(template, name)
    # Its NetworkPolicy selects the predictor Pods KServe labels with the service's name.
    policy = find(objects, "NetworkPolicy", "denoiser-predictor")
    kserve_labels = {"serving.kserve.io/inferenceservice": "denoiser"}
    assert labels_match(policy["spec"]["podSelector"], kserve_labels)
    assert not by_kind(objects, "Deployment"), "KServe replaces the TF Serving Deployment"


def test_the_guide_installs_the_argo_release_the_schema_and_the_test_cluster_are_of():
    """One Argo release everywhere: the guide's install.yaml, the schema the manifests are
    validated against (crds/README.md) and the controller tests/cluster builds."""
    (installed,) = re.findall(r"argo-workflows/releases/download/(v[\d.]+)/install\.yaml", guide())
    schema = re.search(r"argo-workflows/v3@(v[\d.]+)", (CRDS / "README.md").read_text())
    built = re.search(
        r"github\.com/argoproj/argo-workflows/v3 (v[\d.]+)",
        (REPO / "tests" / "cluster" / "build" / "argo" / "go.mod").read_text(),
    )
    assert schema and built
    assert installed == schema.group(1) == built.group(1)
