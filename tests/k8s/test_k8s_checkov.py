"""checkov on the rendered manifests (every overlay and the KServe variants, the Pods of a
workflow's steps and the Jobs it creates included: checkov reads no Argo kind) and on the
Dockerfile: no failed check; each skip is named in the manifest with its reason.

checkov pins libraries that conflict with requirements.lock, so it lives in its own venv:
    python3.11 -m venv .venv-checkov
    .venv-checkov/bin/pip install -r tests/k8s/checkov-requirements.txt
($DAE_CHECKOV may name another checkov executable.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from k8s_support import REPO, VARIANTS, argo_pods, embedded_jobs

# Every check we suppress, and why (the manifests carry the same reason next to the skip).
ALLOWED_SKIPS = {
    # Digests cannot be known before the images are built and pushed.
    "CKV_K8S_43": "images are pinned by release tag",
    # dev loads the locally built image into kind / minikube instead of pulling it.
    "CKV_K8S_15": "dev only",
    # The pipeline reads its metadata store's URL from the environment ($DAE_METADATA_URL,
    # a secretKeyRef: never a literal, a ConfigMap or a file in the image).
    "CKV_K8S_35": "the pipeline reads the metadata store URL from $DAE_METADATA_URL",
    # The official postgres image runs as its own postgres user, uid 999.
    "CKV_K8S_40": "postgres runs as the official image's postgres user (uid 999)",
}
# Where each skip may appear, if not everywhere.
SKIP_ONLY_ON = {"CKV_K8S_40": {"StatefulSet"}}

pytestmark = pytest.mark.slow  # checkov, in its own venv, over every overlay and the Dockerfile


def _checkov() -> str:
    candidates = [os.environ.get("DAE_CHECKOV"), str(REPO / ".venv-checkov" / "bin" / "checkov")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("checkov")
    if found:
        return found
    pytest.fail(
        "checkov not found: install it into its own venv with `python3.11 -m venv .venv-checkov "
        "&& .venv-checkov/bin/pip install -r tests/k8s/checkov-requirements.txt` "
        "(or set DAE_CHECKOV to a checkov executable)",
        pytrace=False,
    )


def workflow_objects(objects: list[dict]) -> list[dict]:
    """The Pods a workflow's steps run (as Argo makes them) and the Jobs it creates, as
    objects checkov reads, named after their template. A step's Pod runs to completion, as a
    Job's does: checkov reads it as a Job's template (so no liveness or readiness probe is
    asked of a batch Pod, as for every Job here)."""
    out = []
    for o in objects:
        if o["kind"] != "WorkflowTemplate":
            continue
        namespace = o["metadata"]["namespace"]
        for name, pod in argo_pods(o):
            if name.endswith(" Job"):
                continue  # the Job itself, below
            step = name.split(" ", 1)[1]
            metadata = {
                "name": f"{o['metadata']['name']}-{step}",
                "namespace": namespace,
                "annotations": pod["metadata"]["annotations"],
            }
            template = {**pod, "spec": {**pod["spec"], "restartPolicy": "Never"}}
            out.append(
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "metadata": metadata,
                    "spec": {"template": template},
                }
            )
        for job in embedded_jobs([o]):
            metadata = {
                **job["metadata"],
                "name": job["metadata"]["generateName"] + "x",
                "namespace": namespace,
            }
            out.append({**job, "metadata": metadata})
    return out


@pytest.fixture(scope="module")
def checkov_reports(rendered, tmp_path_factory) -> dict[str, dict]:
    scan = tmp_path_factory.mktemp("checkov")
    for variant in VARIANTS:
        objects = rendered[variant] + workflow_objects(rendered[variant])
        (scan / f"{variant}.yaml").write_text(yaml.safe_dump_all(objects))
    shutil.copy(REPO / "Dockerfile", scan / "Dockerfile")
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}
    cmd = [_checkov(), "-d", str(scan), "--framework", "kubernetes", "dockerfile"]
    cmd += ["--skip-download", "--compact", "--output", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    try:
        reports = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    reports = reports if isinstance(reports, list) else [reports]
    return {r["check_type"]: r for r in reports}


def _describe(check: dict) -> str:
    return (
        f"{check['check_id']} {check['check_name']} on {check['resource']} ({check['file_path']})"
    )


@pytest.mark.parametrize("framework", ["kubernetes", "dockerfile"])
def test_checkov_finds_no_failed_check(checkov_reports, framework):
    assert framework in checkov_reports, f"checkov ran no {framework} scan"
    report = checkov_reports[framework]
    summary = report["summary"]
    failed = report["results"]["failed_checks"]
    assert not failed, "checkov failed:\n" + "\n".join(_describe(c) for c in failed)
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0
    print(f"checkov {framework}: {summary}")


def test_every_workload_was_scanned(checkov_reports, rendered):
    scanned = {c["resource"] for c in checkov_reports["kubernetes"]["results"]["passed_checks"]}
    for variant, objects in rendered.items():
        namespace = next(o for o in objects if o["kind"] == "Namespace")["metadata"]["name"]
        steps = workflow_objects(objects)
        assert bool(steps) == variant.startswith("prod"), variant
        for obj in objects + steps:
            if obj["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob"):
                name = f"{obj['kind']}.{namespace}.{obj['metadata']['name']}"
                assert name in scanned, f"checkov did not check {name} ({variant})"


def test_each_skip_is_named_with_its_reason(checkov_reports):
    skipped = checkov_reports["kubernetes"]["results"]["skipped_checks"]
    skipped += checkov_reports["dockerfile"]["results"]["skipped_checks"]
    for check in skipped:
        reason = check["check_result"].get("suppress_comment", "")
        assert check["check_id"] in ALLOWED_SKIPS, f"unexpected skip: {_describe(check)}"
        assert reason and reason != "No comment provided", f"no reason: {_describe(check)}"
        assert reason.startswith(ALLOWED_SKIPS[check["check_id"]]), _describe(check)
        if check["check_id"] == "CKV_K8S_15":
            assert Path(check["file_path"]).name.startswith("dev"), _describe(check)
        if check["check_id"] in SKIP_ONLY_ON:
            kind = check["resource"].split(".")[0]
            assert kind in SKIP_ONLY_ON[check["check_id"]], _describe(check)
        print(f"skipped {check['check_id']} on {check['resource']}: {reason}")
