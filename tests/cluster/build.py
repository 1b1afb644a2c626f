"""The cluster's binaries, built from source: Kubernetes, etcd, Argo Workflows, CoreDNS, the
NetworkPolicy enforcer, Beam's SDK boot and pause, all pinned by one Go module
(tests/cluster/build/go.mod) and cached per machine in
`${XDG_CACHE_HOME:-~/.cache}/dae/cluster/bin/<key>/`. The key names the versions and hashes
the recipe (go.mod, go.sum, our Go sources, the commands and flags below), so a changed recipe
builds anew. A build goes into a `.partial-` folder renamed when complete: a folder under its
key is always whole. `python -m tests.cluster.build` (`make cluster-bin`) prints the folder."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

MODULE = Path(__file__).with_name("build")

# Go module (a folder under MODULE) -> output name -> Go package (`./x`: a main of ours).
COMMANDS = {
    ".": {
        "etcd": "go.etcd.io/etcd/server/v3",
        "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
        "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
        "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
        "kubelet": "k8s.io/kubernetes/cmd/kubelet",
        "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
        "kubectl": "k8s.io/kubernetes/cmd/kubectl",
        "coredns": "./coredns",
        "kube-router": "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router",
        "boot": "github.com/apache/beam/sdks/v2/python/container",
    },
    "argo": {  # its own module: argo/go.mod says why, FROM_ZIP how it builds
        "workflow-controller": "github.com/argoproj/argo-workflows/v3/cmd/workflow-controller",
        "argoexec": "github.com/argoproj/argo-workflows/v3/cmd/argoexec",
    },
}
# Argo builds as its own main module (its go.mod, go.sum and replace), from its module zip:
# zips drop symlinks, and its executor's signal_linux.go is one, put back here.
FROM_ZIP = {
    "argo": (
        "github.com/argoproj/argo-workflows/v3",
        {"workflow/executor/osspecific/signal_linux.go": "signal_darwin.go"},
    ),
}
# Without gcc, pause is our Go port of Kubernetes' build/pause/linux/pause.c.
PAUSE_C = "build/pause/linux/pause.c"
PAUSE_GO = "./pause"

# The key's names for the modules that pin each component.
KEY_MODULES = {
    "k8s": "k8s.io/kubernetes",
    "etcd": "go.etcd.io/etcd/server/v3",
    "argo": "github.com/argoproj/argo-workflows/v3",
    "coredns": "github.com/coredns/coredns",
    "kube-router": "github.com/cloudnativelabs/kube-router/v2",
    "beam": "github.com/apache/beam/sdks/v2",
}
ARGO_CRDS = "manifests/base/crds/minimal"  # in Argo's module zip: the CRDs of its install

# Static (images run them too), no paths of this machine, symbols stripped as in releases.
GO_BUILD = ["build", "-trimpath", "-buildvcs=false"]
GO_ENV = {"CGO_ENABLED": "0"}


class BuildError(RuntimeError):
    """One line saying what is missing or what failed (the suite turns it into a skip)."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dae" / "cluster" / "bin"


def pinned(go_mod: str) -> dict[str, str]:
    """Module -> version of go.mod's require lines (replace lines are not pins)."""
    found = {}
    for line in go_mod.splitlines():
        m = re.match(r"^\s*(?:require\s+)?([\w.\-/]+)\s+(v[\w.\-+]+)\s*(?://.*)?$", line)
        if m and "=>" not in line:
            found[m[1]] = m[2]
    return found


def ldflags(versions: dict[str, str]) -> str:
    """Kubernetes, Argo and kube-router read their version from the linker (else /version says
    v0.0.0-master); Kubernetes stamps both its component-base and client-go copies."""
    k8s = versions["k8s.io/kubernetes"]
    major, minor = k8s.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.{k}={v}" for k, v in (("gitVersion", k8s), ("gitMajor", major))]
        flags += [f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitTreeState=clean"]
    argo = "github.com/argoproj/argo-workflows/v3"
    flags.append(f"-X {argo}.version={versions[argo]}")  # also the executor image's tag
    router = "github.com/cloudnativelabs/kube-router/v2"
    flags.append(f"-X {router}/pkg/version.Version={versions[router]}")
    return " ".join(flags)


def recipe_files(module: Path) -> list[Path]:
    return sorted(
        p for p in module.rglob("*") if p.is_file() and p.suffix in (".go", ".mod", ".sum")
    )


def versions(module: Path = MODULE) -> dict[str, str]:
    """The pins of every module folder in COMMANDS (the main module's last: they win)."""
    found = {}
    for folder in sorted(COMMANDS, key=lambda f: f == "."):
        found |= pinned((module / folder / "go.mod").read_text())
    return found


def argo_version(module: Path = MODULE) -> str:
    """The Argo release the build pins: its controller, executor image and CRDs agree."""
    return versions(module)[KEY_MODULES["argo"]]


def key(module: Path = MODULE) -> str:
    """`k8s-v1.34.4-etcd-v3.6.16-...-<hash>`: the versions, and a hash of the whole recipe."""
    pins = versions(module)
    missing = [m for m in KEY_MODULES.values() if m not in pins]
    if missing:
        raise BuildError(f"{module}'s go.mod files pin no version of {', '.join(missing)}")
    digest = hashlib.sha256()
    for path in recipe_files(module):
        digest.update(f"{path.relative_to(module)}\0".encode() + path.read_bytes() + b"\0")
    recipe = [COMMANDS, FROM_ZIP, PAUSE_C, PAUSE_GO, ARGO_CRDS, GO_BUILD, GO_ENV, ldflags(pins)]
    digest.update(json.dumps(recipe).encode())
    names = "-".join(f"{short}-{pins[mod]}" for short, mod in KEY_MODULES.items())
    return f"{names}-{digest.hexdigest()[:12]}"


def binaries(module: Path = MODULE, cache: Path | None = None) -> Path:
    """The folder of every binary and `argo-crds/`, built first if this recipe has none yet.
    Concurrent callers wait on a lock instead of building twice."""
    cache = cache or cache_root()
    done = cache / key(module)
    if done.is_dir():
        return done
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_dir():  # another process built it while we waited
            return done
        for leftover in cache.glob(f".partial-{done.name}-*"):  # a killed build's
            shutil.rmtree(leftover)
        partial = cache / f".partial-{done.name}-{os.getpid()}"
        partial.mkdir()
        try:
            compile_into(partial, module)
            partial.rename(done)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return done


def default_name(package: str) -> str:
    """The file `go build -o dir/` names a main package (a /vN suffix is skipped)."""
    parts = package.split("/")
    return parts[-2] if re.fullmatch(r"v\d+", parts[-1]) and len(parts) > 1 else parts[-1]


def go(module: Path, *args: str, log: Path | None = None) -> str:
    """Runs go in the module (niced: the machine is shared); a failure is one BuildError."""
    exe = shutil.which("go")
    if exe is None:
        raise BuildError(
            "go not found on PATH: the cluster's binaries are built from source with Go 1.26+"
        )
    env = {**os.environ, **GO_ENV}
    run = subprocess.run(
        ["nice", "-n", "5", exe, *args], cwd=module, env=env, capture_output=True, text=True
    )
    if log is not None:
        log.write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        lines = [ln for ln in run.stderr.splitlines() if ln.strip()] or ["no output"]
        where = f" (all of it in {log})" if log else ""
        raise BuildError(f"go {args[0]} failed (exit {run.returncode}): {lines[-1]}{where}")
    return run.stdout


def module_dirs(folder: Path) -> dict[str, Path]:
    """Where Go unpacked the KEY_MODULES this module pins (pause.c, CRDs, overlays)."""
    pins = [m for m in KEY_MODULES.values() if m in pinned((folder / "go.mod").read_text())]
    listed = go(folder, "list", "-m", "-f", "{{.Path}} {{.Dir}}", *pins)
    return {path: Path(d) for path, d in (line.split(" ", 1) for line in listed.splitlines())}


def compile_module(folder: Path, out: Path, packages: dict[str, str], ldflags: str) -> None:
    """One `go build` of a module's commands (one action graph: compiles and links
    overlap), renamed from go's default names."""
    build = [*GO_BUILD, f"-ldflags={ldflags}", f"-o={out}/", *packages.values()]
    go(folder, *build, log=out.parent / "last-build.log")
    for name, package in packages.items():
        if default_name(package) != name:
            (out / default_name(package)).rename(out / name)


def unzip_module(folder: Path, into: Path) -> Path:
    """The source tree of FROM_ZIP[folder]'s module as its zip has it (verified against
    folder's go.sum by go), with its symlinks back."""
    path, symlinks = FROM_ZIP[folder.name]
    info = json.loads(go(folder, "mod", "download", "-json", path))
    with zipfile.ZipFile(info["Zip"]) as z:
        z.extractall(into)
    root = into / f"{path}@{info['Version']}"
    for name, target in symlinks.items():
        (root / name).symlink_to(target)
    return root


def compile_into(out: Path, module: Path) -> None:
    """Each module's commands, then pause and Argo's CRDs."""
    pins = versions(module)
    dirs = {m: d for folder in COMMANDS for m, d in module_dirs(module / folder).items()}
    pause_c = dirs["k8s.io/kubernetes"] / PAUSE_C
    gcc = shutil.which("gcc") if pause_c.is_file() else None
    names = [n for commands in COMMANDS.values() for n in commands] + ["pause"]
    print(f"building {', '.join(names)} into {out.parent} (cold: ~25 min)", file=sys.stderr)
    for folder, commands in COMMANDS.items():
        where = module / folder
        if folder in FROM_ZIP:
            where = unzip_module(where, out / f".src-{folder}")
        pause = {} if gcc or folder != "." else {"pause": PAUSE_GO}
        compile_module(where, out, {**commands, **pause}, ldflags(pins))
        shutil.rmtree(out / f".src-{folder}", ignore_errors=True)
    if gcc:
        version = f"-DVERSION={pins['k8s.io/kubernetes']}"
        cmd = [gcc, "-Os", "-static", "-Wall", "-Werror", version, "-o", out / "pause", pause_c]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise BuildError(f"gcc could not build {pause_c}: {run.stderr.strip()[-200:]}")
    crds = out / "argo-crds"
    crds.mkdir()
    for crd in sorted((dirs[KEY_MODULES["argo"]] / ARGO_CRDS).glob("*.yaml")):
        shutil.copyfile(crd, crds / crd.name)  # a writable copy of the read-only module file


def main() -> int:
    try:
        print(binaries())
    except BuildError as e:
        print(f"cluster-bin: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
