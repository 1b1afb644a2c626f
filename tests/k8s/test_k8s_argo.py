"""The prod overlay orchestrates the pipeline through Argo Workflows (components/argo) and dev
keeps the plain CronJob: the compiled workflow arrives in the overlay as compiled (but for the
overlay's own settings: the registry's image, 4 workers each, transform on Flink), the first
run needs no other object, its Pods reach the API server and nothing else outside, and the
steps never retry dae's own verdicts."""

from __future__ import annotations

import pytest
import yaml
from argo_rules import retry
from k8s_support import (
    K8S,
    allows,
    api_clients,
    by_kind,
    embedded_jobs,
    find,
    labels_match,
    pod_templates,
    selecting,
)

COMPILED = K8S / "components" / "argo" / "workflow.yaml"
API_PORTS = (443, 6443)


def _template(objects) -> dict:
    return find(objects, "WorkflowTemplate", "dae-pipeline")


def test_only_prod_runs_through_argo(rendered):
    for variant, objects in rendered.items():
        argo = bool(by_kind(objects, "WorkflowTemplate"))
        assert argo == variant.startswith("prod"), variant
        assert bool(by_kind(objects, "CronJob")) == (not argo), "one way to run, not two"


def test_the_overlay_applies_the_compiled_workflow(rendered):
    """What the overlay changes of workflow.yaml is exactly its own business."""
    (compiled,) = [
        o for o in yaml.safe_load_all(COMPILED.read_text()) if o and o["kind"] == "WorkflowTemplate"
    ]
    rendered_spec = _template(rendered["prod"])["spec"]
    compiled_templates = {t["name"]: t for t in compiled["spec"]["templates"]}
    for t in rendered_spec["templates"]:
        mine = compiled_templates[t["name"]]
        text, original = yaml.safe_dump(t), yaml.safe_dump(mine)
        text = text.replace("registry.example.com/dae:0.1.0", "dae")
        if t["name"] == "transform":  # components/flink
            assert (
                t["container"]["args"][: len(mine["container"]["args"])]
                == (mine["container"]["args"])
            )
            continue
        assert text == original, f"the overlay changed step {t['name']}"
    workers = {p["name"]: p["value"] for p in rendered_spec["arguments"]["parameters"]}
    assert workers == {"tune-workers": "4", "train-workers": "4"}
    (job,) = embedded_jobs(rendered["prod"])
    assert job["spec"]["completions"] == 4
    assert job["spec"]["template"]["spec"]["containers"][0]["image"].startswith("registry.")


def _references(value) -> list:
    """Every reference to another Argo object inside a spec."""
    if isinstance(value, dict):
        own = [value[k] for k in ("workflowTemplateRef", "templateRef") if k in value]
        return own + [r for v in value.values() for r in _references(v)]
    return [r for v in value for r in _references(v)] if isinstance(value, list) else []


def test_the_first_run_needs_no_other_object(rendered):
    """Applied in one go, the Workflow may reach Argo's controller before the WorkflowTemplate
    reaches its informer, and a workflowTemplateRef it cannot resolve fails the run for good
    (v3.7.18 workflow/controller/operator.go, setExecWorkflow): the first run carries the
    template's spec inline, with every template its steps name."""
    objects = rendered["prod"]
    first = find(objects, "Workflow", "dae-first-run")
    spec = first["spec"]
    assert not _references(spec), _references(spec)
    own = {t["name"] for t in spec["templates"]}
    named = {spec["entrypoint"], spec["onExit"]}
    for t in spec["templates"]:
        named |= {task["template"] for task in t.get("dag", {}).get("tasks", [])}
        named |= {step["template"] for group in t.get("steps", []) for step in group}
    assert named <= own, named - own
    assert spec == _template(objects)["spec"], "the first run is the template's run"


def test_the_schedule_uses_the_template(rendered):
    objects = rendered["prod"]
    cron = find(objects, "CronWorkflow", "dae-retrain")
    assert cron["spec"]["workflowSpec"] == {"workflowTemplateRef": {"name": "dae-pipeline"}}
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["timezone"]
    template = _template(objects)
    account = find(objects, "ServiceAccount", template["spec"]["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    token = find(objects, "Secret", f"{account['metadata']['name']}.service-account-token")
    assert token["type"] == "kubernetes.io/service-account-token"
    assert token["metadata"]["annotations"] == {
        "kubernetes.io/service-account.name": account["metadata"]["name"]
    }
    binding = find(objects, "RoleBinding", account["metadata"]["name"])
    ((kind, name),) = [(s["kind"], s["name"]) for s in binding["subjects"]]
    assert (kind, name) == ("ServiceAccount", account["metadata"]["name"])
    rules = find(objects, "Role", binding["roleRef"]["name"])["rules"]
    assert all("*" not in r["verbs"] + r["resources"] for r in rules)


def test_only_the_api_servers_callers_reach_it(rendered):
    """Argo's executor runs in every Pod of a workflow, the training Job's watcher in the Job's
    Pods; no other Pod whose egress is locked down (the pipeline's, Flink's TaskManagers, the
    database) gets to the API server's ports (test_k8s_network: at any cluster's addresses)."""
    objects = rendered["prod"]
    policies = by_kind(objects, "NetworkPolicy").values()
    clients = api_clients(objects)
    seen = 0
    for name, pod in pod_templates(objects):
        labels = pod["metadata"]["labels"]
        if not selecting(policies, labels, "Egress"):
            continue  # serving and Flink's JobManager: their egress is not the pipeline's
        api = {"ip": "10.96.0.1"}  # the `kubernetes` Service of a kubeadm cluster
        reaches = all(allows(policies, "Egress", labels, api, p) for p in API_PORTS)
        assert reaches == (name in clients), name
        seen += reaches
    assert seen >= 13


def test_every_workflow_pod_is_covered_and_only_peers_connect(rendered):
    objects = rendered["prod"]
    policies = by_kind(objects, "NetworkPolicy").values()
    labels = {n: p["metadata"]["labels"] for n, p in pod_templates(objects)}
    steps = {n.split(" ", 1)[1]: v for n, v in labels.items() if n.startswith("WorkflowTemplate")}
    assert {"tune-chief", "tune-worker", "train Job", "ingest", "finish"} <= set(steps)
    for name, pod in steps.items():
        if name in ("tune-chief", "train Job"):
            continue
        assert not allows(policies, "Ingress", pod, {"labels": steps["ingest"]}, 8000), name
    chief = steps["tune-chief"]
    assert allows(policies, "Ingress", chief, {"labels": steps["tune-worker"]}, 8000)
    assert not allows(policies, "Ingress", chief, {"labels": steps["ingest"]}, 8000)
    service = find(objects, "Service", "dae-tune-chief")
    assert labels_match(service["spec"]["selector"], chief)
    assert not labels_match(service["spec"]["selector"], steps["tune-worker"])


@pytest.mark.parametrize(
    "code, retried", [("1", False), ("2", False), ("75", False), ("137", True), ("143", True)]
)
def test_steps_never_retry_a_busy_root_or_a_verdict(rendered, code, retried):
    """Exit 75 (the root is busy) and dae's own failures are not retried: Argo would only
    queue up behind the run that holds the root, or fail again the same way."""
    for t in _template(rendered["prod"])["spec"]["templates"]:
        if "container" in t and t["name"] not in ("record-failure", "api-check"):
            strategy = t["retryStrategy"]
            assert int(strategy["limit"]) >= 1 and strategy["retryPolicy"] == "Always"
            message = f"Error (exit code {code})"
            assert retry(strategy.get("expression"), code, "Failed", message) is retried, t["name"]
