"""Serving stays up under load and through node drains, whichever serves (the TF Serving
Deployment or KServe's predictor): readiness is the model-status check, liveness only fails
for a process that no longer accepts connections (a saturated server is taken out of the
Service, not restarted, which would pile its load onto the others); exactly one
PodDisruptionBudget covers the serving Pods. And the guide's way to point an overlay at the
image needs nothing but kubectl, as its Prerequisites say."""

from __future__ import annotations

import re

import pytest
from k8s_support import VARIANTS, by_kind, guide, guide_commands, labels_match, pod_templates

MODEL_STATUS = "/v1/models/denoiser"


def _serving(objects) -> tuple[str, dict, dict]:
    """(name, pod template, serving container), whichever serves."""
    for name, pod in pod_templates(objects):
        if name == "Deployment/dae-serving" or name.startswith("InferenceService/"):
            (c,) = pod["spec"]["containers"]
            return name, pod, c
    raise AssertionError("no serving Pod")


def _port_number(container: dict, port) -> int:
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    return named.get(port, port)


@pytest.mark.parametrize("variant", VARIANTS)
def test_liveness_fails_only_for_a_wedged_server(rendered, variant):
    _, _, c = _serving(rendered[variant])
    ready, live = c["readinessProbe"], c["livenessProbe"]
    assert ready["httpGet"]["path"] == MODEL_STATUS, "readiness: a version is loaded"
    assert "httpGet" not in live and "exec" not in live, "liveness asks no model, runs nothing"
    grpc = [p["containerPort"] for p in c["ports"] if "grpc" in p["name"]]
    assert _port_number(c, live["tcpSocket"]["port"]) in grpc
    # Restarted after minutes of refusing connections, never sooner than readiness gives up.
    patience = live.get("periodSeconds", 10) * live.get("failureThreshold", 3)
    assert patience >= 120
    assert patience > ready.get("periodSeconds", 10) * ready.get("failureThreshold", 3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_disruption_budget_covers_the_serving_pods(rendered, variant):
    """Two budgets on one Pod make every eviction of it fail (the eviction API refuses it):
    exactly one, which lets a drain proceed one replica at a time."""
    objects = rendered[variant]
    serving, pod, _ = _serving(objects)
    labels = pod["metadata"]["labels"]
    budgets = [
        b
        for b in by_kind(objects, "PodDisruptionBudget").values()
        if labels_match(b["spec"]["selector"], labels)
    ]
    assert len(budgets) == 1, [b["metadata"]["name"] for b in budgets]
    assert budgets[0]["spec"].get("maxUnavailable") == 1
    # ... and no other Pod of the namespace is held by it.
    for name, other in pod_templates(objects):
        if name != serving:
            assert not labels_match(budgets[0]["spec"]["selector"], other["metadata"]["labels"])


def test_the_guide_needs_no_standalone_kustomize():
    """The Prerequisites ask for kubectl (its built-in kustomize renders k8s/); kubectl has
    no `kustomize edit`, so no command of the guide may run standalone kustomize."""
    text = guide()
    prerequisites = text[text.index("## Prerequisites") :].split("\n## ", 1)[0]
    assert "built-in kustomize" in prerequisites
    for command in guide_commands():
        steps = re.split(r"&&|\|\||;|\||\(|\)", command.split(" #")[0])
        assert not any(s.split()[:1] == ["kustomize"] for s in steps), command
