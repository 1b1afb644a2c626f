"""A real single-node Kubernetes cluster on this machine, from the binaries built here:
etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd, the kubelet and
kube-proxy as plain processes; CoreDNS and Argo's controller as Pods, the NetworkPolicy
enforcer as the kernel allows (addons.py, policies.py).
`python tests/cluster/cluster.py up|down|status` (`make cluster`, `make cluster-down`); the
test session's fixture uses `Cluster`.

Everything lives in the state folder (`<cache>/dae/cluster/run/`); `state.json` there names
the processes and what down must put back, and is written after each step, so a start that
fails half-way is taken down as completely as a whole one."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import daemons
import node
import policies
from daemons import DaemonError
from pki import PKI, Pair

NODE = "dae-node"
SERVICE_IP = "10.96.0.1"
PORT = 6443


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dae" / "cluster"


def node_ip() -> str:
    """The address of the default route's interface: the node's InternalIP, and the address
    the `kubernetes` Service's endpoints name (Pods reach the apiserver there)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "route", "get", "1.1.1.1"], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[out.index("src") + 1]


class ClusterError(RuntimeError):
    pass


def missing_prerequisites() -> str:
    """Why this machine cannot run the cluster ('' if it can): root, Go, the Debian tools."""
    if os.geteuid() != 0:
        return "the test cluster needs root (it runs containerd, the kubelet and iptables)"
    if not shutil.which("go"):
        return "the test cluster needs Go (Kubernetes is built from source): `go` not on PATH"
    for tool in ("containerd", "runc", "ctr", "iptables", "ipset", "buildah", "conntrack", "nft"):
        if not shutil.which(tool):
            return f"the test cluster needs `{tool}` (`make cluster` apt-gets it)"
    if not Path(node.CNI_BIN, "bridge").exists():
        return "the test cluster needs the CNI plugins (containernetworking-plugins)"
    return ""


class Cluster:
    """The cluster in `run` (default: the cache's run/ folder)."""

    def __init__(self, run: Path | None = None):
        self.run = run or cache_root() / "run"
        self.logs = self.run / "logs"
        self.state_file = self.run / "state.json"
        self.kubeconfig = self.run / "pki" / "admin.kubeconfig"
        self.cache = cache_root()
        self.node = NODE

    # -- state -------------------------------------------------------------------------------
    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_file)

    def ready(self) -> bool:
        """Brought up whole by someone, and its apiserver still answers."""
        if not self.state().get("ready"):
            return False
        try:
            self.kubectl("get", "--raw", "/readyz", timeout=10)
            return True
        except ClusterError:
            return False

    @contextlib.contextmanager
    def _lock(self):
        self.run.parent.mkdir(parents=True, exist_ok=True)
        with open(self.run.parent / "run.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # -- kubectl -----------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        argv = [str(self.bin / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode:
            raise ClusterError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    @property
    def bin(self) -> Path:
        return Path(self.state()["bin"])

    # -- up ----------------------------------------------------------------------------------
    def up(self, owner: str = "make") -> float | None:
        """Bring the cluster up (taking down a leftover one first); the seconds it took, None
        if it was up already. `owner` says who takes it down: a person (`make cluster-down`)
        or the test sessions (see `session`)."""
        problem = missing_prerequisites()
        if problem:
            raise ClusterError(problem)
        with self._lock():
            if self.ready():
                return None
            self._down()
            started = time.monotonic()
            try:
                self._up(owner)
            except BaseException:
                self._down()
                raise
            return time.monotonic() - started

    @contextlib.contextmanager
    def session(self):
        """Hold the cluster for a test session: brought up if it is down; taken down at the end
        by the last session out, unless a person brought it up (`make cluster`). Sessions
        hold a shared lock while they use it; the one that gets it exclusively is the last."""
        self.run.parent.mkdir(parents=True, exist_ok=True)
        with open(self.run.parent / "users.lock", "w") as users:
            fcntl.flock(users, fcntl.LOCK_SH)
            try:
                self.up(owner="session")
                yield self
            finally:
                fcntl.flock(users, fcntl.LOCK_UN)
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # another session still uses it: the last one out takes it down
                else:
                    if self.state().get("owner") == "session":
                        self.down()

    def _up(self, owner: str) -> None:
        from build import binaries
        from images import images

        bin_dir = binaries()
        archives = images()
        self.logs.mkdir(parents=True)
        state = {"bin": str(bin_dir), "pids": {}, "sysctls": node.read_sysctls(), "owner": owner}
        self._save(state)
        node.write_sysctls(node.SYSCTLS)
        ip = node_ip()
        pki = self._pki(ip)
        server = f"https://{ip}:{PORT}"

        def start(name, argv, ready, env=None, timeout=120):
            pid = daemons.start(name, argv, self.logs, env)
            state["pids"][name] = pid
            self._save(state)
            daemons.wait_until(name, ready, pid, self.logs / f"{name}.log", timeout)

        b = lambda name: str(bin_dir / name)  # noqa: E731
        start(
            "etcd",
            [b("etcd"), *self._etcd_flags()],
            daemons.http_ok("http://127.0.0.1:2379/health"),
        )
        admin_tls = daemons.tls_context(pki.ca.cert, *self._pair("admin"))
        start(
            "kube-apiserver",
            [b("kube-apiserver"), *self._apiserver_flags(pki, ip)],
            daemons.http_ok(f"{server}/readyz", admin_tls),
        )
        insecure = daemons.tls_context(pki.ca.cert, *self._pair("admin"))
        insecure.check_hostname = False
        insecure.verify_mode = 0  # their own self-signed serving certificates
        start(
            "kube-controller-manager",
            [b("kube-controller-manager"), *self._controller_manager_flags(pki)],
            daemons.http_ok("https://127.0.0.1:10257/healthz", insecure),
        )
        start(
            "kube-scheduler",
            [
                b("kube-scheduler"),
                f"--kubeconfig={self.run / 'pki' / 'scheduler.kubeconfig'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
            ],
            daemons.http_ok("https://127.0.0.1:10259/healthz", insecure),
        )
        node.cni_config(self.run)
        sandbox = next((n for n in archives if "/pause:" in n), "registry.k8s.io/pause:3.10")
        config = node.containerd_config(self.run, sandbox, self.cache / "containerd")
        start(
            "containerd",
            ["containerd", "--config", str(config)],
            daemons.socket_ready(node.containerd_socket(self.run)),
        )
        self.import_images(archives)
        serving = Pair(*self._pair("kubelet-serving"))
        start(
            "kubelet",
            [
                b("kubelet"),
                f"--config={node.kubelet_config(self.run, pki, serving)}",
                f"--kubeconfig={self.run / 'pki' / 'kubelet.kubeconfig'}",
                f"--hostname-override={NODE}",
                f"--node-ip={ip}",
                f"--root-dir={self.run / 'kubelet' / 'root'}",
            ],
            daemons.http_ok("http://127.0.0.1:10248/healthz"),
        )
        proxy_config = node.kube_proxy_config(self.run, self.run / "pki" / "proxy.kubeconfig", NODE)
        start(
            "kube-proxy",
            [b("kube-proxy"), f"--config={proxy_config}"],
            daemons.http_ok("http://127.0.0.1:10256/healthz"),
        )
        self.kubectl("wait", "--for=condition=Ready", f"node/{NODE}", "--timeout=120s", timeout=130)
        import addons

        state.update(addons.install(self, bin_dir, start))
        state["ready"] = True
        self._save(state)

    def _pki(self, ip: str) -> PKI:
        pki = PKI(self.run / "pki")
        server = f"https://{ip}:{PORT}"
        hosts = (
            ip,
            SERVICE_IP,
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
        pki.issue("apiserver", "kube-apiserver", server=True, hosts=hosts)
        pki.issue(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            ("system:masters",),
            client=True,
        )
        pki.issue(
            "kubelet-serving",
            f"system:node:{NODE}",
            ("system:nodes",),
            server=True,
            hosts=(ip, NODE),
        )
        clients = {
            "admin": ("kubernetes-admin", ("system:masters",)),
            "controller-manager": ("system:kube-controller-manager", ()),
            "scheduler": ("system:kube-scheduler", ()),
            "kubelet": (f"system:node:{NODE}", ("system:nodes",)),
            "proxy": ("system:kube-proxy", ()),
        }
        for name, (cn, orgs) in clients.items():
            pair = pki.issue(name, cn, orgs, client=True)
            pki.kubeconfig(self.run / "pki" / f"{name}.kubeconfig", server, cn, pair)
        return pki

    def _pair(self, name: str) -> tuple[Path, Path]:
        pki = self.run / "pki"
        return pki / f"{name}.crt", pki / f"{name}.key"

    def _etcd_flags(self) -> list[str]:
        return [
            "--name=default",
            f"--data-dir={self.run / 'etcd'}",
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=default=http://127.0.0.1:2380",
            "--unsafe-no-fsync",  # a throwaway cluster: its data dies with it
        ]

    def _apiserver_flags(self, pki: PKI, ip: str) -> list[str]:
        cert, key = self._pair("apiserver")
        kcert, kkey = self._pair("apiserver-kubelet-client")
        return [
            "--etcd-servers=http://127.0.0.1:2379",
            f"--advertise-address={ip}",
            f"--secure-port={PORT}",
            f"--client-ca-file={pki.ca.cert}",
            f"--tls-cert-file={cert}",
            f"--tls-private-key-file={key}",
            f"--kubelet-client-certificate={kcert}",
            f"--kubelet-client-key={kkey}",
            f"--kubelet-certificate-authority={pki.ca.cert}",
            "--kubelet-preferred-address-types=InternalIP",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction,PodSecurity",
            "--allow-privileged=true",  # the policy enforcer's DaemonSet (kube-system)
            f"--service-account-key-file={pki.service_account.cert}",
            f"--service-account-signing-key-file={pki.service_account.key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={node.SERVICE_CIDR}",
            "--anonymous-auth=true",  # /readyz, /livez for probes, as kubeadm leaves it
        ]

    def _controller_manager_flags(self, pki: PKI) -> list[str]:
        kubeconfig = self.run / "pki" / "controller-manager.kubeconfig"
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.service_account.key}",
            f"--root-ca-file={pki.ca.cert}",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            "--allocate-node-cidrs=true",
            f"--cluster-cidr={node.CLUSTER_CIDR}",
            "--node-cidr-mask-size=24",
            f"--service-cluster-ip-range={node.SERVICE_CIDR}",
        ]

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = ["ctr", "--address", str(node.containerd_socket(self.run)), "-n", "k8s.io", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if check and proc.returncode:
            raise ClusterError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def import_images(self, archives: dict[str, Path]) -> None:
        """Load each docker archive into the CRI's namespace (each names its own images),
        unless an earlier start imported that very archive and its images are still there."""
        present = set(self.ctr("images", "ls", "-q").stdout.split())
        marks = self.cache / "containerd" / "imported"
        marks.mkdir(parents=True, exist_ok=True)
        for archive in sorted(set(archives.values())):
            names = {name for name, a in archives.items() if a == archive}
            stat = archive.stat()
            mark = marks / f"{archive.parent.name}-{stat.st_size}-{stat.st_mtime_ns}"
            if mark.exists() and names <= present:
                continue
            self.ctr("images", "import", str(archive))
            mark.touch()

    # -- down --------------------------------------------------------------------------------
    def down(self) -> None:
        with self._lock():
            self._down()

    def _down(self) -> None:
        """Stop every process, in reverse order, and take away what they left behind."""
        state = self.state()
        pids = state.get("pids", {})
        for name in reversed(list(pids)):
            if name == "containerd" and daemons.alive(pids[name]):
                node.kill_containers(self.run)
            daemons.stop(pids[name])
        for folder in (self.run, self.cache / "containerd"):
            if folder.exists():
                node.unmount_under(folder)
        node.remove_network()
        policies.remove_ipsets()
        node.remove_cgroups()
        if state.get("sysctls"):
            node.write_sysctls(state["sysctls"])
        if self.run.exists():
            shutil.rmtree(self.run)


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "up"
    cluster = Cluster()
    try:
        if command == "up":
            seconds = cluster.up()
            how = "already up" if seconds is None else f"up in {seconds:.0f} s"
            print(f"cluster {how}; logs in {cluster.logs}\nexport KUBECONFIG={cluster.kubeconfig}")
            print(f"kubectl: {cluster.bin / 'kubectl'}")
        elif command == "down":
            cluster.down()
            print("cluster down")
        elif command == "status":
            print("up" if cluster.ready() else "down")
        else:
            print(f"usage: {argv[0]} up|down|status", file=sys.stderr)
            return 2
    except (ClusterError, DaemonError, RuntimeError) as err:
        print(f"cluster {command}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
