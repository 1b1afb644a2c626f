"""The node's side of the test cluster: containerd's, the CNI's, the kubelet's and
kube-proxy's configuration, the host settings they need, and taking all of it away again
(mounts, network namespaces, the bridge, iptables/nftables rules, cgroups, sysctls)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import yaml

POD_CIDR = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
DNS_IP = "10.96.0.10"
BRIDGE = "dae0"
NETWORK = "dae-test"
CNI_BIN = "/usr/lib/cni"
# Set by up, put back by down. The kubelet sets the vm./kernel. ones itself
# (protectKernelDefaults false: kubelet's "setupKernelTunables").
SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/bridge/bridge-nf-call-iptables": "1",
    "net/bridge/bridge-nf-call-ip6tables": "1",
}
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


def read_sysctls() -> dict[str, str]:
    values = {}
    for key in (*SYSCTLS, *KUBELET_SYSCTLS):
        path = Path("/proc/sys") / key
        if path.exists():
            values[key] = path.read_text().strip()
    return values


def write_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / key).write_text(value)


def containerd_config(run: Path, sandbox_image: str, store: Path) -> Path:
    """containerd 1.6's config: its own root, state and socket; the CRI with cgroupfs, overlayfs,
    our CNI folder; OOM scores clamped to its own (CAP_SYS_RESOURCE is missing here, so a
    negative oom_score_adj, which the kubelet asks for Guaranteed Pods and the sandbox, fails);
    network namespaces under its state folder, so down finds every one. Its root (`store`:
    images, snapshots) outlives the cluster, so the next start imports no image again."""
    cri = {
        "sandbox_image": sandbox_image,
        "restrict_oom_score_adj": True,
        "netns_mounts_under_state_dir": True,
        "enable_selinux": False,
        "containerd": {
            "snapshotter": "overlayfs",
            "default_runtime_name": "runc",
            "runtimes": {
                "runc": {
                    "runtime_type": "io.containerd.runc.v2",
                    "options": {"SystemdCgroup": False, "BinaryName": "/usr/sbin/runc"},
                }
            },
        },
        "cni": {"bin_dir": CNI_BIN, "conf_dir": str(run / "cni" / "net.d")},
    }
    lines = [
        "version = 2",
        f'root = "{store}"',
        f'state = "{run / "containerd" / "state"}"',
        "oom_score = 0",
        'disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", '
        '"io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", '
        '"io.containerd.snapshotter.v1.devmapper"]',
        "[grpc]",
        f'  address = "{containerd_socket(run)}"',
        "[debug]",
        '  address = ""',
        '[plugins."io.containerd.internal.v1.opt"]',
        f'  path = "{run / "containerd" / "opt"}"',
        *_toml('plugins."io.containerd.grpc.v1.cri"', cri),
    ]
    path = run / "containerd" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(section: str, table: dict) -> list[str]:
    """Enough TOML for containerd's nested tables (json.dumps quotes strings as TOML does)."""
    lines = [f"[{section}]"]
    nested = []
    for key, value in table.items():
        if isinstance(value, dict):
            nested += _toml(f"{section}.{key}", value)
        else:
            lines.append(f"  {key} = {json.dumps(value)}")
    return lines + nested


def containerd_socket(run: Path) -> Path:
    return run / "containerd" / "containerd.sock"


def cni_config(run: Path) -> Path:
    """bridge + host-local (its leases in our folder) + portmap; loopback is containerd's."""
    conf = {
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(run / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    path = run / "cni" / "net.d" / "10-dae-test.conflist"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(conf, indent=2))
    return path


def kubelet_config(run: Path, pki, serving) -> Path:
    """What this VM needs: cgroupfs (no systemd), swap tolerated, cgroup v1 accepted
    (hybrid here), no negative OOM score for itself (CAP_SYS_RESOURCE), image GC off (every
    image is imported here; none could be pulled back)."""
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "failCgroupV1": False,
        "oomScoreAdj": 0,
        "containerRuntimeEndpoint": f"unix://{containerd_socket(run)}",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki.ca.cert)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        "clusterDNS": [DNS_IP],
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "readOnlyPort": 0,
        "cpuManagerPolicy": "none",
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # No disk signals: under disk pressure the kubelet evicts Pods and deletes every image
        # not in use (seen here when the shared disk dipped below 2%), and none can be pulled
        # back. Signals left out are off (mergeDefaultEvictionSettings is false).
        "evictionHard": {"memory.available": "100Mi"},
        "protectKernelDefaults": False,
        "rotateCertificates": False,
        "maxPods": 110,
    }
    path = run / "kubelet" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def kube_proxy_config(run: Path, kubeconfig: Path, node: str) -> Path:
    """iptables mode; it changes no conntrack sysctl and no route_localnet (down has nothing
    of the machine's to put back)."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": CLUSTER_CIDR,
        "hostnameOverride": node,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"localhostNodePorts": False},
    }
    path = run / "kube-proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def kill_containers(run: Path) -> None:
    """Every task containerd runs for the CRI killed and deleted (their shims exit with them),
    then the containers and their snapshots: the image store stays, the Pods do not.
    containerd must still be running."""
    ctr = ("ctr", "--address", str(containerd_socket(run)), "-n", "k8s.io")
    tasks = _run(*ctr, "tasks", "ls", "-q").stdout.split()
    for task in tasks:
        _run(*ctr, "tasks", "kill", "-s", "SIGKILL", "--all", task)
    for task in tasks:
        _run(*ctr, "tasks", "delete", "-f", task)
    containers = _run(*ctr, "containers", "ls", "-q").stdout.split()
    if containers:
        _run(*ctr, "containers", "delete", *containers)


def unmount_under(folder: Path) -> None:
    """Unmount everything mounted under `folder`, deepest first (kubelet volumes, container
    root filesystems, sandbox /dev/shm, network namespaces)."""
    prefix = str(folder.resolve()) + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            mounts.append(point)
    for point in sorted(set(mounts), key=len, reverse=True):
        _run("umount", "-l", point)


def remove_network() -> None:
    """The bridge, and the rules kube-proxy, the kubelet, the bridge plugin and the policy
    enforcer added."""
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _run("ip", "link", "delete", BRIDGE)
    for save, restore in (
        ("iptables-save", "iptables-restore"),
        ("ip6tables-save", "ip6tables-restore"),
    ):
        dump = _run(save).stdout
        kept = _without_chains(dump)
        if kept != dump:
            subprocess.run([restore], input=kept, text=True, capture_output=True, check=False)


def _without_chains(dump: str) -> str:
    """An iptables-save dump without our rules: the KUBE-* chains (kube-proxy's, the
    kubelet's), the rules the bridge plugin tagged with our network's name and the CNI-*
    chains those jump to; other CNI users' rules (buildah's, podman's) stay."""
    tag = f'\\"{NETWORK}\\"'
    lines = dump.splitlines()
    # User chains (":NAME - [..]"); built-in ones carry a policy, and targets such as
    # ACCEPT are no chains of anyone's.
    chains = {line.split()[0][1:] for line in lines if line.startswith(":") and " - " in line}
    ours = {name for name in chains if name.startswith("KUBE-")}
    for line in lines:
        words = line.split()
        if line.startswith("-A") and tag in line and "-j" in words:
            ours.add(words[words.index("-j") + 1])
    ours &= chains
    out = []
    for line in lines:
        words = line.split()
        if line.startswith(":") and words[0][1:] in ours:
            continue
        if line.startswith("-A") and (tag in line or ours.intersection(words)):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def remove_cgroups() -> None:
    """The kubelet's /kubepods hierarchy, in every cgroup v1 controller and the unified one;
    a process still in it (containerd gone before its containers) is killed first."""
    tops = [c / "kubepods" for c in Path("/sys/fs/cgroup").iterdir() if (c / "kubepods").is_dir()]
    for top in tops:
        for procs in top.rglob("cgroup.procs"):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    for top in tops:
        folders = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for folder in [*folders, top]:
            for _ in range(50):  # a killed process leaves its cgroup a moment later
                try:
                    os.rmdir(folder)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
