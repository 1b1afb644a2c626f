"""The NetworkPolicy enforcer, so the manifests' policies are enforced, not just stored:
kube-router's firewall (iptables + ipset), as a host process as k3s embeds it.

Why not kube-network-policies (sigs.k8s.io, v0.7.0/v0.8.0 the only releases the module proxy
serves): it programs nftables rules that hand packets to userspace with nft's `queue`
expression; this VM's kernel is built without CONFIG_NFT_QUEUE (and loads no modules), so
every such rule fails with ENOENT (`"syncing nftables rules" error=<conn.Receive: netlink
receive: no such file or directory>`) and nothing is enforced. kube-router v2.1.0 is the only
release the proxy serves and has reported security flaws; it is test tooling only (never in
an image or a manifest users get), running just its firewall on a throwaway local cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path

import daemons

KUBE_ROUTER_HEALTH = 20244
# Names kube-router gives its ipsets (down destroys them).
IPSET_PREFIXES = ("KUBE-", "kube-router")


def install(cluster, bin_dir: Path, start) -> dict:
    """Start the enforcer this kernel can run: {"enforcer": name} or {"enforcer": "",
    "problem": why none}; "rollouts" lists what to wait for."""
    if (bin_dir / "kube-router").exists():
        start(
            "kube-router",
            [
                str(bin_dir / "kube-router"),
                f"--kubeconfig={cluster.kubeconfig}",
                f"--hostname-override={cluster.node}",
                "--run-firewall=true",
                "--run-router=false",  # Pod networking is the bridge plugin's
                "--run-service-proxy=false",  # Services are kube-proxy's
                "--enable-cni=false",
                "--enable-ipv6=false",
                f"--health-port={KUBE_ROUTER_HEALTH}",
            ],
            daemons.http_ok(f"http://127.0.0.1:{KUBE_ROUTER_HEALTH}/healthz"),
        )
        return {"enforcer": "kube-router"}
    return {"enforcer": "", "problem": f"no NetworkPolicy enforcer: {bin_dir} has no kube-router"}


def remove_ipsets() -> None:
    """kube-router's ipsets, once no iptables rule refers to them."""
    names = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout
    for name in names.split():
        if name.startswith(IPSET_PREFIXES):
            subprocess.run(["ipset", "destroy", name], capture_output=True, check=False)
