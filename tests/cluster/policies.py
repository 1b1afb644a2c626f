"""The NetworkPolicy enforcer, so the manifests' policies are enforced, not just stored.

kube-network-policies v0.8.0 (the shared choice) programs nftables rules that hand packets to
userspace with nft's `queue` expression; a kernel built without CONFIG_NFT_QUEUE (this VM's:
no modules either) answers every such rule with ENOENT, and its log repeats
`"syncing nftables rules" error=<conn.Receive: netlink receive: no such file or directory>`
while nothing is enforced. kube-router's firewall (iptables + ipset, which this kernel has)
enforces here, as a host process as k3s embeds it: used when the binaries folder has it."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import daemons
import yaml
from binary_image import BinaryImage

IMAGE = BinaryImage(
    "kube-network-policies",
    "registry.k8s.io/networking/kube-network-policies:v0.8.0",
    "0",
    "/bin/netpol",
    entrypoint=False,
)
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
    if nft_queue():
        cluster.import_images({IMAGE.name: IMAGE.archive(bin_dir, cluster.cache)})
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(network_policies()))
        return {
            "enforcer": "kube-network-policies",
            "rollouts": [("kube-system", "daemonset", "kube-network-policies")],
        }
    return {
        "enforcer": "",
        "problem": "no NetworkPolicy enforcer: kube-network-policies needs nftables' queue "
        "expression (this kernel lacks CONFIG_NFT_QUEUE) and the binaries have no kube-router",
    }


def nft_queue() -> bool:
    """Whether the kernel has nftables' queue expression (built in or as a module)."""
    config = Path("/proc/config.gz")
    if not config.exists():
        return True  # cannot tell: let kube-network-policies try
    text = gzip.decompress(config.read_bytes()).decode()
    return "CONFIG_NFT_QUEUE=y" in text or "CONFIG_NFT_QUEUE=m" in text


def network_policies() -> list[dict]:
    """kube-network-policies' own install.yaml (from its module), at our image."""
    from addons import module_file

    text = module_file("sigs.k8s.io/kube-network-policies@v0.8.0", "install.yaml")
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        if doc["kind"] == "DaemonSet":
            spec = doc["spec"]["template"]["spec"]
            container = spec["containers"][0]
            container["image"] = IMAGE.name
            container["imagePullPolicy"] = "Never"
            # NRI is off in containerd 1.6's CRI (the Pod IPs come from the API), and its
            # hostPath folders would be made on the host: dropped with the flag.
            container["args"].append("--disable-nri")
            container.pop("volumeMounts", None)
            spec.pop("volumes", None)
    return docs


def remove_ipsets() -> None:
    """kube-router's ipsets, once no iptables rule refers to them."""
    names = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout
    for name in names.split():
        if name.startswith(IPSET_PREFIXES):
            subprocess.run(["ipset", "destroy", name], capture_output=True, check=False)
