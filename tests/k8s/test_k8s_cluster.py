"""What a first `kubectl apply -k` on a real cluster needs beyond schema-valid objects: a
storage class for the shared volume, a root the pipeline's uid can write, the metadata
database and its Secret, Jobs that do not retry a busy root, NetworkPolicies that let the
pipeline through and nothing else (Argo's executor to the API server), and Flink's own RBAC
(TF Serving and KServe: test_k8s_serving.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pod_fields
import pytest
import yaml
from k8s_support import (
    K8S,
    OVERLAYS,
    VARIANTS,
    allows,
    api_clients,
    by_kind,
    containers,
    embedded_jobs,
    find,
    flink_pod_labels,
    guide,
    is_dae,
    labels_match,
    pod_template,
    pod_templates,
    selecting,
)

from dae.pipeline.config import load_config

CLAIM = "dae-root"
UID = 10001  # the Dockerfile's USER, every pipeline Pod's runAsUser/runAsGroup
SECRET = "dae-metadata"
PIPELINE_COMMANDS = {"run", "stage", "runs", "lineage"}  # what reads the metadata store
# How many Pods (containers) of each overlay write the volume / read the store: dev's `dae run`
# (scheduled and once, each with its wait-for-metadata init container), prod's workflow steps.
WRITERS = {"dev": 2, "prod": 14}
STORE_USERS = {"dev": 4, "prod": 15}
METADATA_ENDPOINT = "169.254.169.254"
API_PORTS = {(443, "TCP"), (6443, "TCP")}
KUBE_DNS = {
    "labels": {"k8s-app": "kube-dns"},
    "namespace": {"kubernetes.io/metadata.name": "kube-system"},
}


def _pipeline_commands(container: dict) -> list[str]:
    """The `dae` subcommands a dae-image container runs."""
    command, args = container.get("command"), container.get("args", [])
    if command is None:
        return [args[0]] if args else []
    if command == ["dae"]:
        return [args[0]] if args else []
    if command[:2] == ["sh", "-c"]:
        calls = [ln.split() for ln in command[2].splitlines()]
        return [
            w[w.index("dae") + 1] for w in calls if w[:1] == ["dae"] or w[:2] == ["exec", "dae"]
        ]
    return []


def _runs_pipeline(container: dict) -> bool:
    return is_dae(container) and bool(set(_pipeline_commands(container)) & PIPELINE_COMMANDS)


def _uses_metadata(pod: dict) -> bool:
    return any(_runs_pipeline(c) or c["name"] == "wait-for-metadata" for c in containers(pod))


def _pipeline_pod(pod: dict) -> bool:
    """A Pod of the pipeline: those using the metadata store, and the workflow's first step,
    which checks the API server under the very policies the other steps' Pods get."""
    check = ["python", "-m", "dae.pipeline.kube_api", "check"]
    return _uses_metadata(pod) or any(c.get("command") == check for c in containers(pod))


def _effective(pod: dict, container: dict, key: str):
    return container.get("securityContext", {}).get(key, pod["spec"]["securityContext"].get(key))


# ---- the shared volume -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_writer_of_the_shared_volume_can_write_its_root(rendered, variant):
    """The volume's root belongs to root on most drivers: fsGroup (applied once, at the root:
    OnRootMismatch) must be the group the writers run as. No container runs as root to fix
    ownership (Pod Security "restricted" would refuse it)."""
    writers = 0
    for name, pod in pod_templates(rendered[variant]):
        claims = {
            v["name"]
            for v in pod["spec"].get("volumes", [])
            if v.get("persistentVolumeClaim", {}).get("claimName") == CLAIM
        }
        for c in containers(pod):
            assert _effective(pod, c, "runAsNonRoot") is True, (name, c["name"])
            rw = [
                m
                for m in c.get("volumeMounts", [])
                if m["name"] in claims and not m.get("readOnly")
            ]
            if not rw:
                continue
            writers += 1
            sc = pod["spec"]["securityContext"]
            assert _effective(pod, c, "runAsUser") == UID, (name, c["name"])
            assert _effective(pod, c, "runAsGroup") == sc["fsGroup"] == UID, (name, c["name"])
            assert sc["fsGroupChangePolicy"] == "OnRootMismatch", name
    assert writers >= WRITERS[variant.split("+")[0]]


def test_dev_never_pulls_the_locally_loaded_image(rendered):
    """kind / minikube get the dae image loaded (`kind load docker-image`): a pull would fail."""
    for variant in ("dev", "dev+kserve"):
        for name, pod in pod_templates(rendered[variant]):
            for c in containers(pod):
                if is_dae(c):
                    assert c["imagePullPolicy"] == "IfNotPresent", (variant, name, c["name"])


# ---- the metadata database and its Secret ------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pipeline_pod_reads_the_store_url_from_the_secret(rendered, variant):
    seen = 0
    for name, pod in pod_templates(rendered[variant]):
        for c in containers(pod):
            env = pod_fields.env(c).get("DAE_METADATA_URL")
            if _runs_pipeline(c) or c["name"] == "wait-for-metadata":
                seen += 1
                assert env, f"{name} {c['name']}: no DAE_METADATA_URL"
                assert "value" not in env, f"{name}: the URL holds a password: a Secret only"
                assert env["valueFrom"] == {"secretKeyRef": {"name": SECRET, "key": "url"}}, name
            else:  # serving, Flink, the Beam workers, the database itself
                assert env is None, f"{name} {c['name']} needs no metadata store"
    assert seen >= STORE_USERS[variant.split("+")[0]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_configmap_holds_the_url_or_a_password(rendered, variant):
    for cm in by_kind(rendered[variant], "ConfigMap").values():
        text = yaml.safe_dump(cm.get("data", {})).lower()
        assert "postgresql" not in text and "password" not in text, cm["metadata"]["name"]
    assert load_config(K8S / "base" / "config.yaml", "default", []).metadata_url is None


def _secret_command() -> dict[str, str]:
    lines = [ln for ln in guide().splitlines() if "create secret generic" in ln]
    assert len(lines) == 1, "one command creates the database Secret"
    words = shlex.split(lines[0].split("&&", 1)[1])
    assert words[words.index("generic") + 1] == SECRET
    literals = [w.split("=", 1)[1] for w in words if w.startswith("--from-literal=")]
    return dict(lit.split("=", 1) for lit in literals)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_readme_secret_matches_the_database(rendered, overlay):
    objects = rendered[overlay]
    keys = _secret_command()
    assert set(keys) == {"url", "password"}
    url = urlsplit(keys["url"])
    assert url.scheme == "postgresql+psycopg"
    sts = find(objects, "StatefulSet", "dae-postgres")
    (db,) = pod_template(sts)["spec"]["containers"]
    env = {k: e.get("value") for k, e in pod_fields.env(db).items()}
    service = find(objects, "Service", sts["spec"]["serviceName"])
    assert (url.hostname, url.port) == (
        service["metadata"]["name"],
        service["spec"]["ports"][0]["port"],
    )
    assert (url.username, url.path) == (env["POSTGRES_USER"], "/" + env["POSTGRES_DB"])
    assert url.password == keys["password"] == "$PW", "one generated password for both keys"
    assert "openssl rand" in guide()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_postgres_is_hardened_and_keeps_its_data(rendered, overlay):
    objects = rendered[overlay]
    sts = find(objects, "StatefulSet", "dae-postgres")
    pod = pod_template(sts)
    (db,) = pod["spec"]["containers"]
    assert re.fullmatch(r"postgres:15\.\d+", db["image"]), "the official image, pinned"
    sc = pod["spec"]["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (999, 999, 999)
    assert sts["spec"]["replicas"] == 1
    env = pod_fields.env(db)
    assert "POSTGRES_PASSWORD" not in env, "the password is read from a file"
    mounts = {m["mountPath"]: m for m in db["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    password = Path(env["POSTGRES_PASSWORD_FILE"]["value"])
    secret = volumes[mounts[str(password.parent)]["name"]]["secret"]
    assert secret["secretName"] == SECRET
    assert secret["items"] == [{"key": "password", "path": password.name}]
    assert secret["defaultMode"] & 0o007 == 0, "not world-readable"
    # PGDATA: a subdirectory of the claim-template volume (initdb wants an empty one).
    pgdata = Path(env["PGDATA"]["value"])
    (template,) = sts["spec"]["volumeClaimTemplates"]
    data = mounts[str(pgdata.parent)]
    assert data["name"] == template["metadata"]["name"] and pgdata.name
    assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
    # dev: the cluster's default class; prod: the class its marked patch names (test_k8s_storage).
    assert ("storageClassName" in template["spec"]) == (overlay == "prod")
    for path in ("/var/run/postgresql", "/tmp"):
        assert "emptyDir" in volumes[mounts[path]["name"]], path
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "pg_isready" in " ".join(db[probe]["exec"]["command"]), probe
    service = find(objects, "Service", sts["spec"]["serviceName"])
    assert labels_match(service["spec"]["selector"], pod["metadata"]["labels"])
    (port,) = service["spec"]["ports"]
    (container_port,) = db["ports"]
    assert port["port"] == 5432 and port["targetPort"] == container_port["name"]
    assert container_port["containerPort"] == 5432


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_the_pipeline_reaches_the_database(rendered, variant):
    objects = rendered[variant]
    policies = by_kind(objects, "NetworkPolicy").values()
    db = pod_template(find(objects, "StatefulSet", "dae-postgres"))["metadata"]["labels"]
    users = 0
    for name, pod in pod_templates(objects):
        labels = pod["metadata"]["labels"]
        if labels == db:
            continue
        reaches = allows(policies, "Egress", labels, {"labels": db}, 5432) and allows(
            policies, "Ingress", db, {"labels": labels}, 5432
        )
        assert reaches == _pipeline_pod(pod), name
        users += reaches
    assert users >= WRITERS[variant.split("+")[0]]
    # Not from another namespace, whatever its Pods' labels.
    elsewhere = {
        "labels": {"app.kubernetes.io/name": "dae"},
        "namespace": {"kubernetes.io/metadata.name": "x"},
    }
    assert not allows(policies, "Ingress", db, elsewhere, 5432)
    assert not allows(policies, "Egress", db, {"ip": "8.8.8.8"}, 443), "the server calls nobody"


# ---- Jobs and a busy root ----------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_jobs_do_not_retry_a_busy_root(rendered, variant):
    """`dae run` / `dae stage` exit 75 when another run holds the root: fail the Job at once
    (the Jobs a workflow creates too; its own steps: test_k8s_argo)."""
    jobs = 0
    for obj in rendered[variant] + embedded_jobs(rendered[variant]):
        if obj["kind"] not in ("Job", "CronJob"):
            continue
        spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
        runners = [c["name"] for c in spec["template"]["spec"]["containers"] if _runs_pipeline(c)]
        if not runners:
            continue
        jobs += 1
        assert spec["template"]["spec"]["restartPolicy"] == "Never"
        rules = spec.get("podFailurePolicy", {}).get("rules", [])
        busy = [
            r
            for r in rules
            if r["action"] == "FailJob"
            and r.get("onExitCodes", {}).get("operator") == "In"
            and 75 in r["onExitCodes"]["values"]
            and r["onExitCodes"].get("containerName") in runners
        ]
        name = obj["metadata"].get("name") or obj["metadata"]["generateName"]
        assert busy, f"{obj['kind']}/{name} would retry exit code 75"
    assert jobs >= (2 if variant.startswith("dev") else 1)


# ---- the pipeline's egress -----------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_pipeline_pods_reach_dns_and_their_peers_but_not_the_outside(rendered, variant):
    objects = rendered[variant]
    policies = by_kind(objects, "NetworkPolicy").values()
    pods = {name: pod["metadata"]["labels"] for name, pod in pod_templates(objects)}
    pipeline = {
        n: labels for n, labels in pods.items() if labels.get("app.kubernetes.io/name") == "dae"
    }
    assert {n for n, pod in pod_templates(objects) if _pipeline_pod(pod)} == set(pipeline)
    clients = api_clients(objects)
    for name, labels in pipeline.items():
        assert selecting(policies, labels, "Egress"), f"{name}: egress unrestricted"
        for protocol in ("UDP", "TCP"):
            assert allows(policies, "Egress", labels, KUBE_DNS, 53, protocol), name
        outside = [(METADATA_ENDPOINT, 80), ("8.8.8.8", 80), ("8.8.8.8", 53), ("10.0.0.1", 8080)]
        if name not in clients:  # the API server's callers (test_k8s_network)
            outside += [("8.8.8.8", 443), ("10.0.0.1", 443)]
        for ip, port in outside:
            assert not allows(policies, "Egress", labels, {"ip": ip}, port), (name, ip, port)
        # No rule opens a network: addresses only, none of them the metadata endpoint; but
        # the API server's, which names its ports only (and only for its callers).
        for policy in selecting(policies, labels, "Egress"):
            for rule in policy["spec"]["egress"]:
                if "to" not in rule and name in clients:
                    assert {(p["port"], p["protocol"]) for p in rule["ports"]} == API_PORTS
                    continue
                assert rule.get("to"), f"{policy['metadata']['name']}: a rule without `to`"
                for peer in rule["to"]:
                    if "ipBlock" in peer:
                        assert peer["ipBlock"]["cidr"].endswith("/32"), peer
                        assert not peer["ipBlock"]["cidr"].startswith(METADATA_ENDPOINT), peer
                    else:
                        assert peer.get("podSelector", {}).get("matchLabels"), peer
    if variant.startswith("dev"):
        return
    # ... and each other, where they must (the workflow's scaled-out stages).
    by_component = {labels.get("app.kubernetes.io/component"): labels for labels in pods.values()}
    pairs = [("tune-worker", "tune-chief", 8000), ("train-worker", "train-worker", 2222)]
    for src, dst, port in pairs:
        a, b = by_component[src], by_component[dst]
        assert allows(policies, "Egress", a, {"labels": b}, port), (src, dst)
        assert allows(policies, "Ingress", b, {"labels": a}, port), (src, dst)
    for other in ("ingest", "train-worker", "tune-cache"):
        step, chief = by_component[other], by_component["tune-chief"]
        end_to_end = allows(policies, "Egress", step, {"labels": chief}, 8000) and allows(
            policies, "Ingress", chief, {"labels": step}, 8000
        )
        assert not end_to_end, f"only tuner workers reach the oracle, not {other}"
    step, worker = by_component["train-cache"], by_component["train-worker"]
    assert not allows(policies, "Ingress", worker, {"labels": step}, 2222)


# ---- Flink -----------------------------------------------------------------------------------


def test_flink_brings_its_service_account_and_role(rendered):
    objects = rendered["prod"]
    flink = find(objects, "FlinkDeployment", "dae-flink")
    account = flink["spec"]["serviceAccount"]
    find(objects, "ServiceAccount", account)
    bindings = [
        b
        for b in by_kind(objects, "RoleBinding").values()
        if any(s["kind"] == "ServiceAccount" and s["name"] == account for s in b["subjects"])
    ]
    assert len(bindings) == 1
    ref = bindings[0]["roleRef"]
    assert ref["kind"] == "Role" and ref["apiGroup"] == "rbac.authorization.k8s.io"
    rules = find(objects, "Role", ref["name"])["rules"]
    # What the operator's job role grants (docs/operations/rbac.md), no wildcard.
    needed = {("", "pods"), ("", "configmaps"), ("apps", "deployments")}
    needed.add(("apps", "deployments/finalizers"))
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
    granted = {
        (g, r)
        for rule in rules
        if verbs <= set(rule["verbs"])
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert needed <= granted
    assert all("*" not in rule["verbs"] + rule["resources"] for rule in rules)


def test_flink_rest_port_is_open_to_the_submitter_and_the_operator_only(rendered):
    objects = rendered["prod"]
    policies = by_kind(objects, "NetworkPolicy").values()
    flink = find(objects, "FlinkDeployment", "dae-flink")
    jm, tm = flink_pod_labels(flink, "jobManager"), flink_pod_labels(flink, "taskManager")
    labels = {name: pod["metadata"]["labels"] for name, pod in pod_templates(objects)}
    submitter = labels["WorkflowTemplate/dae-pipeline transform"]
    operator = {
        "labels": {"app.kubernetes.io/name": "flink-kubernetes-operator"},
        "namespace": {"kubernetes.io/metadata.name": "flink-operator"},
    }
    assert allows(policies, "Ingress", jm, {"labels": submitter}, 8081)
    assert allows(policies, "Egress", submitter, {"labels": jm}, 8081)
    assert allows(policies, "Ingress", jm, operator, 8081)
    assert allows(policies, "Ingress", jm, {"labels": tm}, 6123), "TaskManagers register"
    assert allows(policies, "Ingress", tm, {"labels": jm}, 6122), "the JobManager deploys tasks"
    others = (
        "Deployment/dae-serving",
        "WorkflowTemplate/dae-pipeline ingest",
        "WorkflowTemplate/dae-pipeline tune-worker",
    )
    for name in others:
        assert not allows(policies, "Ingress", jm, {"labels": labels[name]}, 8081), name
    assert not allows(policies, "Ingress", jm, {"labels": submitter}, 6123)
    stranger = {"labels": submitter, "namespace": {"kubernetes.io/metadata.name": "other"}}
    assert not allows(policies, "Ingress", jm, stranger, 8081)


def test_only_the_beam_workers_mount_the_volume_in_flink(rendered):
    """The transform's Beam workers write its outputs themselves (read-write, unavoidably);
    the JobManager and the Flink containers never see the volume."""
    flink = find(rendered["prod"], "FlinkDeployment", "dae-flink")
    for name, pod in pod_templates([flink]):
        claims = {v["name"] for v in pod["spec"].get("volumes", []) if "persistentVolumeClaim" in v}
        mounting = [
            c["name"]
            for c in containers(pod)
            if any(m["name"] in claims for m in c.get("volumeMounts", []))
        ]
        assert mounting == (["beam-worker-pool"] if "taskManager" in name else []), name
