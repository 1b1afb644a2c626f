"""What the NetworkPolicies let through on a real cluster, as shipped: Argo's executor reaches
the API server whatever the cluster's addresses (the `kubernetes` Service's ClusterIP and the
endpoints kube-proxy sends it to), with no address to fill in; the Cilium variant names the
API server by Cilium's entity instead, valid against Cilium's CRD; Flink's TaskManagers, which
run dae code, reach their cluster and DNS only and hold no Kubernetes token."""

from __future__ import annotations

import ipaddress

import pytest
from k8s_support import (
    K8S,
    VARIANTS,
    add_component,
    allows,
    api_clients,
    by_kind,
    copy_tree,
    crd_errors,
    find,
    flink_pod_labels,
    guide,
    labels_match,
    pod_templates,
    render,
)

CILIUM = "components/cilium-apiserver"
KUBE_DNS = {
    "labels": {"k8s-app": "kube-dns"},
    "namespace": {"kubernetes.io/metadata.name": "kube-system"},
}
# (the `kubernetes` Service's ClusterIP, what kube-proxy DNATs it to) on clusters as they
# come: the ClusterIP answers on 443, the endpoints on 443 or 6443.
API_SERVERS = {
    "kubeadm / kind": [("10.96.0.1", 443), ("172.18.0.2", 6443)],
    "EKS (VPC ENIs, replaced by control-plane updates)": [
        ("172.20.0.1", 443),
        ("10.0.87.12", 443),
        ("10.0.141.7", 443),
    ],
    "GKE (the 34.118.224.0/20 service range)": [("34.118.224.1", 443), ("172.16.0.2", 443)],
    "AKS (a public control-plane address)": [("10.0.0.1", 443), ("20.61.14.9", 443)],
    "k3s": [("10.43.0.1", 443), ("192.168.1.20", 6443)],
}
DOCUMENTATION_NETS = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")  # RFC 5737


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.startswith("prod")])
def test_the_executor_reaches_the_api_server_as_shipped(rendered, variant):
    """Defect 2: a placeholder address reached nothing until a user replaced it by hand. The
    training Job's Pods are no workflow's, but its watcher sidecar calls the API server too."""
    objects = rendered[variant]
    policies = by_kind(objects, "NetworkPolicy").values()
    pods = api_clients(objects)
    assert len(pods) >= 12
    for cluster, addresses in API_SERVERS.items():
        for name, labels in pods.items():
            for ip, port in addresses:
                assert allows(policies, "Egress", labels, {"ip": ip}, port), (cluster, name, ip)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.startswith("prod")])
def test_the_api_server_rule_opens_its_ports_only_and_no_placeholder_is_shipped(rendered, variant):
    """The price of naming no address: TCP 443 and 6443 to anywhere, nothing else; the cloud's
    metadata endpoint (port 80) stays closed."""
    objects = rendered[variant]
    policies = by_kind(objects, "NetworkPolicy").values()
    for labels in api_clients(objects).values():
        for ip, port, protocol in (
            ("169.254.169.254", 80, "TCP"),
            ("8.8.8.8", 80, "TCP"),
            ("8.8.8.8", 53, "UDP"),
            ("10.96.0.10", 8080, "TCP"),
            ("10.96.0.1", 443, "UDP"),
        ):
            assert not allows(policies, "Egress", labels, {"ip": ip}, port, protocol), (ip, port)
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            for peer in rule.get("to", []):
                cidr = peer.get("ipBlock", {}).get("cidr")
                if cidr:
                    net = ipaddress.ip_network(cidr)
                    assert not any(
                        net.overlaps(ipaddress.ip_network(d)) for d in DOCUMENTATION_NETS
                    )
    assert "192.0.2." not in (K8S / "overlays" / "prod" / "kustomization.yaml").read_text()


def _with_cilium(tmp_path) -> list[dict]:
    return render(add_component(copy_tree(tmp_path), "overlays/prod", CILIUM))


def test_the_cilium_variant_names_the_api_server_entity(tmp_path):
    """Every API client is selected by a CiliumNetworkPolicy allowing the kube-apiserver
    entity on 443 and 6443, and no NetworkPolicy still opens those ports to any address."""
    objects = _with_cilium(tmp_path)
    assert "dae-workflow-egress-apiserver" not in by_kind(objects, "NetworkPolicy")
    for policy in by_kind(objects, "NetworkPolicy").values():
        assert all(rule.get("to") for rule in policy["spec"].get("egress", [])), policy
    policies = by_kind(objects, "CiliumNetworkPolicy").values()
    assert policies
    for policy in policies:
        errors = crd_errors(policy)
        assert not errors, "\n".join(errors)
        assert policy["metadata"]["namespace"] == "dae"
        (rule,) = policy["spec"]["egress"]
        assert rule["toEntities"] == ["kube-apiserver"]
        (ports,) = rule["toPorts"]
        assert {(p["port"], p["protocol"]) for p in ports["ports"]} == {
            ("443", "TCP"),
            ("6443", "TCP"),
        }
    clients = api_clients(objects)
    assert len(clients) >= 13
    for name, labels in clients.items():
        assert any(labels_match(p["spec"]["endpointSelector"], labels) for p in policies), name
    serving = dict(pod_templates(objects))["Deployment/dae-serving"]["metadata"]["labels"]
    assert not any(labels_match(p["spec"]["endpointSelector"], serving) for p in policies)
    assert CILIUM in guide()


def test_cilium_schema_rejects_a_misspelt_entity(tmp_path):
    """The schema check above can fail: Cilium's CRD enumerates its entities."""
    policy, *_ = by_kind(_with_cilium(tmp_path), "CiliumNetworkPolicy").values()
    bad = {**policy, "spec": {**policy["spec"], "egress": [{"toEntities": ["kube-api-server"]}]}}
    assert crd_errors(bad)


def test_flink_taskmanagers_reach_their_cluster_and_dns_only(rendered):
    """Defect 7: the TaskManagers run dae code (the Beam worker pool) with nothing holding
    their egress; they need DNS and the session cluster's own Pods, nothing else (no API
    server: no Kubernetes HA; no metadata store: the Beam workers write files only)."""
    objects = rendered["prod"]
    policies = by_kind(objects, "NetworkPolicy").values()
    flink = find(objects, "FlinkDeployment", "dae-flink")
    jm, tm = flink_pod_labels(flink, "jobManager"), flink_pod_labels(flink, "taskManager")
    for protocol in ("UDP", "TCP"):
        assert allows(policies, "Egress", tm, KUBE_DNS, 53, protocol)
    for port in (6123, 6124):  # the JobManager's RPC and blob server
        assert allows(policies, "Egress", tm, {"labels": jm}, port)
    assert allows(policies, "Egress", tm, {"labels": tm}, 41234), "the data exchange (any port)"
    labels = {name: pod["metadata"]["labels"] for name, pod in pod_templates(objects)}
    db = labels["StatefulSet/dae-postgres"]
    assert not allows(policies, "Egress", tm, {"labels": db}, 5432)
    assert not allows(policies, "Egress", tm, {"labels": labels["Deployment/dae-serving"]}, 8500)
    other_flink = {"labels": jm, "namespace": {"kubernetes.io/metadata.name": "other"}}
    assert not allows(policies, "Egress", tm, other_flink, 6123)
    for ip, port in (("169.254.169.254", 80), ("10.96.0.1", 443), ("8.8.8.8", 443)):
        assert not allows(policies, "Egress", tm, {"ip": ip}, port), (ip, port)


def test_flink_taskmanagers_get_no_token_the_jobmanager_keeps_its_own(rendered):
    """The account may create and delete Pods: only the JobManager (native mode: it creates
    the TaskManagers) needs its token."""
    flink = find(rendered["prod"], "FlinkDeployment", "dae-flink")
    pods = dict(pod_templates([flink]))
    assert (
        pods["FlinkDeployment/dae-flink taskManager"]["spec"].get("automountServiceAccountToken")
        is False
    )
    assert pods["FlinkDeployment/dae-flink jobManager"]["spec"].get(
        "automountServiceAccountToken", True
    )
    assert not any(k.startswith("high-availability") for k in flink["spec"]["flinkConfiguration"])
