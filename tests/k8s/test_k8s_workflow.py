"""The workflow's scaled-out steps as the manifests wire them: Keras Tuner's chief and workers,
the training workers' TF_CONFIG from their completion index, and the transform on Flink's
session cluster with the options prod gives Beam."""

from __future__ import annotations

import json
import os
import subprocess

import pod_fields
import pytest
import yaml
from k8s_support import (
    SAMPLE_WORKFLOW,
    embedded_job,
    find,
    is_dae,
    labels_match,
    pod_templates,
)

ROOT = "/data/dae-root"  # --root of every dae container: the shared volume's mount path
CLAIM = "dae-root"
SAMPLE_RUN_ID = SAMPLE_WORKFLOW  # a workflow's run is named after it


# ---- the workflow's scaled-out stages ---------------------------------------------------------


def _step(objects, name: str) -> dict:
    template = find(objects, "WorkflowTemplate", "dae-pipeline")
    (step,) = [t for t in template["spec"]["templates"] if t["name"] == name]
    return step


def _step_pod(objects, name: str) -> dict:
    (pod,) = [p for n, p in pod_templates(objects) if n == f"WorkflowTemplate/dae-pipeline {name}"]
    return pod


def test_keras_tuner_chief_and_workers_are_wired(rendered):
    objects = rendered["prod"]
    chief_pod, worker_pod = _step_pod(objects, "tune-chief"), _step_pod(objects, "tune-worker")
    service = find(objects, "Service", "dae-tune-chief")
    (chief,) = chief_pod["spec"]["containers"]
    (worker,) = worker_pod["spec"]["containers"]
    port = int(pod_fields.value(chief, "KERASTUNER_ORACLE_PORT"))
    assert pod_fields.value(chief, "KERASTUNER_TUNER_ID") == "chief"
    assert pod_fields.value(chief, "KERASTUNER_ORACLE_IP") == "0.0.0.0"
    assert pod_fields.ports(chief_pod)[port] == port
    assert labels_match(service["spec"]["selector"], chief_pod["metadata"]["labels"])
    assert not labels_match(service["spec"]["selector"], worker_pod["metadata"]["labels"])
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["port"] == port and pod_fields.ports(chief_pod)[svc_port["targetPort"]] == port
    assert pod_fields.value(worker, "KERASTUNER_ORACLE_IP") == service["metadata"]["name"]
    assert int(pod_fields.value(worker, "KERASTUNER_ORACLE_PORT")) == port
    # Worker ids follow the task's index (withSequence): tuner0, tuner1, ...
    assert pod_fields.value(worker, "KERASTUNER_TUNER_ID") == "tuner{{inputs.parameters.index}}"
    template = find(objects, "WorkflowTemplate", "dae-pipeline")
    (task,) = [
        t for t in template["spec"]["templates"][0]["dag"]["tasks"] if t["name"] == "tune-workers"
    ]
    assert task["withSequence"] == {"count": "{{workflow.parameters.tune-workers}}"}
    assert task["arguments"]["parameters"] == [{"name": "index", "value": "{{item}}"}]
    assert pod_fields.args(chief)[:3] == pod_fields.args(worker)[:3] == ["dae", "stage", "tune"]
    # Only the workers reach the oracle.
    policy = find(objects, "NetworkPolicy", "dae-tune-chief")
    assert labels_match(policy["spec"]["podSelector"], chief_pod["metadata"]["labels"])
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    assert labels_match(source["podSelector"], worker_pod["metadata"]["labels"])
    assert [p["port"] for p in rule["ports"]] == [port]


def _tf_configs(container: dict, workers: int, job_name: str) -> list[dict]:
    """Run the training container's script under /bin/sh with a stand-in `dae` that prints
    the TF_CONFIG and argv it was started with, once per completion index."""
    script = container["command"][2]
    out = []
    with_env = {n: e["value"] for n, e in pod_fields.env(container).items() if "value" in e}
    for index in range(workers):
        env = {
            **with_env,
            "WORKER_INDEX": str(index),
            "JOB_NAME": job_name,
            "PATH": f"{FAKE_DAE_DIR}:{os.environ['PATH']}",
        }
        proc = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


FAKE_DAE_DIR = None


@pytest.fixture
def fake_dae(tmp_path):
    global FAKE_DAE_DIR
    script = tmp_path / "dae"
    script.write_text(
        '#!/bin/sh\nprintf \'{"tf_config": %s, "argv": "%s"}\\n\' "$TF_CONFIG" "$*"\n'
    )
    script.chmod(0o755)
    FAKE_DAE_DIR = tmp_path
    yield
    FAKE_DAE_DIR = None


def test_training_workers_build_tf_config_from_the_completion_index(rendered, fake_dae):
    objects = rendered["prod"]
    template = find(objects, "WorkflowTemplate", "dae-pipeline")
    job = embedded_job(template, _step(objects, "train"))
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    spec = job["spec"]
    workers = int(pod_fields.value(container, "NUM_WORKERS"))
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == workers == 4, "prod: 4 workers"
    assert spec["backoffLimit"] == 0, "a collective cannot lose a member: all fail, all retry"
    field = pod_fields.env(container)["WORKER_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    field = pod_fields.env(container)["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.labels['batch.kubernetes.io/job-name']"
    service = find(objects, "Service", "dae-train")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert labels_match(service["spec"]["selector"], pod["metadata"]["labels"])
    port = int(pod_fields.value(container, "TF_PORT"))
    assert pod_fields.ports(pod)["collective"] == port == service["spec"]["ports"][0]["port"]
    # Indexed Job Pods are named <job>-<index>; the headless Service makes that resolvable.
    job_name = job["metadata"]["generateName"] + "x7k2p"
    configs = _tf_configs(container, workers, job_name)
    hosts = [f"{job_name}-{i}.{service['metadata']['name']}:{port}" for i in range(workers)]
    for index, seen in enumerate(configs):
        assert seen["tf_config"] == {
            "cluster": {"worker": hosts},
            "task": {"type": "worker", "index": index},
        }
        assert seen["argv"] == f"stage train --run {SAMPLE_RUN_ID} --root {ROOT}"
    policy = find(objects, "NetworkPolicy", "dae-train")
    assert labels_match(policy["spec"]["podSelector"], pod["metadata"]["labels"])
    assert [p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]] == [port]


# ---- Flink ------------------------------------------------------------------------------------


def _beam_options(args: list[str]) -> dict[str, str]:
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    (options,) = [s for s in sets if s.startswith("beam.options=")]
    parsed = yaml.safe_load(options.split("=", 1)[1])
    return dict((o.split("=", 1) + [""])[:2] for o in parsed)


def test_the_workflow_transforms_on_the_session_cluster(rendered):
    objects = rendered["prod"]
    flink = find(objects, "FlinkDeployment", "dae-flink")
    args = _step(objects, "transform")["container"]["args"]
    assert args[:2] == ["stage", "transform"] and "beam.runner=FlinkRunner" in args
    options = _beam_options(args)
    # The operator's REST Service of a FlinkDeployment is <name>-rest on 8081.
    assert options["--flink_master"] == f"http://{flink['metadata']['name']}-rest:8081"
    assert options["--flink_version"] == flink["spec"]["flinkVersion"][1:].replace("_", ".")
    assert "--flink_submit_uber_jar" in options
    assert options["--environment_type"] == "EXTERNAL"
    # The worker pool sidecar listens where the TaskManager looks for it.
    tm = flink["spec"]["taskManager"]
    (pool,) = [
        c for c in tm["podTemplate"]["spec"]["containers"] if c["name"] == "beam-worker-pool"
    ]
    host, port = options["--environment_config"].split(":")
    assert host == "localhost" and [p["containerPort"] for p in pool["ports"]] == [int(port)]
    assert is_dae(pool) and pool["command"] == ["/opt/apache/beam/boot"]
    assert pool["args"] == ["--worker_pool"]
    # The SDK workers read and write the run on the same volume, at the same path.
    mount = pod_fields.mounts(pool)[ROOT]
    volumes = {v["name"]: v for v in tm["podTemplate"]["spec"]["volumes"]}
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == CLAIM
    slots = int(flink["spec"]["flinkConfiguration"]["taskmanager.numberOfTaskSlots"])
    assert int(options["--parallelism"]) <= tm["replicas"] * slots
    # No other step is patched.
    template = find(objects, "WorkflowTemplate", "dae-pipeline")
    patched = [t["name"] for t in template["spec"]["templates"] if "FlinkRunner" in json.dumps(t)]
    assert patched == ["transform"]
