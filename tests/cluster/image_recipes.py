"""How each of the cluster's images is made (tests/cluster/images.py picks, keys, stores and
exports them): root filesystems from Debian's packages with mmdebstrap, small distroless-like
ones from a tar, all committed with buildah; the dae image by `buildah bud` of the Dockerfile.
Standard library only."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().with_name("images")
KEY_LABEL = "org.dae.cluster.key"
DEBIAN = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# Like Debian's slim images: no manuals, docs or translations (copyright notices stay).
SLIM = (
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageError(RuntimeError):
    """One line saying what is missing or which step failed."""


def dockerfile_args(dockerfile: Path) -> dict[str, str]:
    """The Dockerfile's ARG defaults (the build passes them as they are)."""
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", dockerfile.read_text(), re.M))


def run(*cmd: str | Path, capture: bool = True, **kw) -> str:
    """Runs a build tool niced (the machine is shared); a failure is one ImageError."""
    done = subprocess.run(
        ["nice", "-n", "5", *map(str, cmd)], capture_output=capture, text=True, **kw
    )
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or "").splitlines() if ln.strip()] or ["no output"]
        raise ImageError(f"{cmd[0]} {cmd[1]} failed (exit {done.returncode}): {lines[-1]}")
    return done.stdout or ""


def mmdebstrap(out: Path, packages: list[str], *hooks: str) -> Path:
    """A Debian bookworm minbase root filesystem tar with packages."""
    tar = out / "rootfs.tar"
    include = f"--include={','.join(packages)}"
    run("mmdebstrap", "--quiet", "--variant=minbase", include, *SLIM, *hooks, "bookworm", tar,
        *DEBIAN)  # fmt: skip
    return tar


def tar_of(files: dict[str, tuple[bytes, int]], dirs: dict[str, tuple[int, int]]) -> bytes:
    """A small root filesystem tar: path -> (content, mode) files, path -> (mode, owner
    uid = gid) folders."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, (mode, owner) in dirs.items():
            info = tarfile.TarInfo(path)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, owner, owner
            tar.addfile(info)
        for path, (data, mode) in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def commit(name: str, key: str, base: str, adds: list[tuple[Path, str]], config: list[str]):
    """buildah from base (or scratch), add tars/files, set the config, commit as name."""
    ctr = run("buildah", "from", "--pull-never", base).strip()
    try:
        for src, dest in adds:
            run("buildah", "add", ctr, src, dest)
        run("buildah", "config", f"--label={KEY_LABEL}={key}", *config, ctr)
        run("buildah", "commit", "--quiet", "--format=docker", ctr, name)
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)


@dataclass
class Image:
    """One image: its names, what its key hashes, how it is built into buildah's storage."""

    name: str
    tags: tuple[str, ...]
    inputs: Callable[[], list]  # strings and Paths (hashed by content)
    build: Callable[[Image, str, Path], None]  # (self, key, scratch folder)
    bases: tuple[str, ...] = ()  # images of this list it is built FROM


def python_base(img: Image, key: str, tmp: Path) -> None:
    """python:3.11-slim-bookworm where the Dockerfile relies on it: `python` at
    /usr/local/bin, `python -m venv` with pip, apt, useradd/groupadd."""
    links = "ln -s /usr/bin/python3.11 $1/usr/local/bin/python3"
    links += " && ln -s python3 $1/usr/local/bin/python"
    tar = mmdebstrap(tmp, PYTHON_PACKAGES, f"--customize-hook={links}")
    env = [f"--env=PATH={PATH}", "--env=LANG=C.UTF-8", "--env=PYTHON_VERSION=3.11"]
    commit(img.name, key, "scratch", [(tar, "/")], [*env, '--cmd=["python3"]'])


PYTHON_PACKAGES = ["python3.11", "python3.11-venv", "ca-certificates", "passwd", "netbase",
                   "tzdata"]  # fmt: skip


def beam_sdk(binary: Callable[[], Path], img: Image, key: str, tmp: Path) -> None:
    """Beam's Python SDK image where the Dockerfile relies on it: its boot binary."""
    boot = tmp / "boot"
    shutil.copyfile(binary(), boot)
    boot.chmod(0o755)
    config = ['--entrypoint=["/opt/apache/beam/boot"]']
    commit(img.name, key, img.bases[0], [(boot, "/opt/apache/beam/boot")], config)


def flink_job_server(jar: Callable[[], Path], img: Image, key: str, tmp: Path) -> None:
    """Beam's Flink job server image where the Dockerfile relies on it: the jar."""
    dest = tmp / "beam-runners-flink-job-server.jar"
    shutil.copyfile(jar(), dest)
    commit(img.name, key, "scratch", [(dest, "/opt/apache/beam/jars/")], [])


def static_image(files: Callable[[], dict[str, Path]], config: list[str]):
    """A distroless-like image: a few binaries, /tmp, an /etc naming root, nobody, nonroot."""
    passwd = (
        "root:x:0:0:root:/root:/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
        "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
    )
    etc = {
        "etc/passwd": passwd.encode(),
        "etc/group": b"root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n",
        "etc/nsswitch.conf": b"hosts: files dns\n",
    }

    def build(img: Image, key: str, tmp: Path) -> None:
        bins = {path: (src.read_bytes(), 0o755) for path, src in files().items()}
        dirs = {"etc": (0o755, 0), "tmp": (0o1777, 0), "bin": (0o755, 0)}
        dirs["home/nonroot"] = (0o700, 65532)
        root = tmp / "rootfs.tar"
        root.write_bytes(tar_of({**{k: (v, 0o644) for k, v in etc.items()}, **bins}, dirs))
        commit(img.name, key, "scratch", [(root, "/")], [f"--env=PATH={PATH}", *config])

    return build


def postgres(img: Image, key: str, tmp: Path) -> None:
    """PostgreSQL from Debian's postgresql-15 laid out as the official image: user postgres
    (uid 999) made before the package, no cluster made by the package, listening on all
    addresses, and an entrypoint that initialises $PGDATA from POSTGRES_* on first start."""
    user = (
        "echo 'postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/bash'"
        " >> $1/etc/passwd && echo 'postgres:x:999:' >> $1/etc/group"
    )
    tar = mmdebstrap(
        tmp,
        ["postgresql-15"],
        f"--essential-hook={user}",
        f"--customize-hook=copy-in {HERE}/postgres-entrypoint.sh {HERE}/postgres-layout.sh"
        " /usr/local/bin",
        '--customize-hook=chroot "$1" /usr/local/bin/postgres-layout.sh',
    )
    run_dir = tmp / "run.tar"  # mmdebstrap keeps /run empty (a tmpfs while it builds)
    run_dir.write_bytes(tar_of({}, {"run": (0o755, 0), "run/postgresql": (0o3777, 999)}))
    env = [f"--env=PATH={PATH}:/usr/lib/postgresql/15/bin", "--env=LANG=C.UTF-8",
           "--env=PG_MAJOR=15", "--env=PGDATA=/var/lib/postgresql/data"]  # fmt: skip
    config = ['--entrypoint=["postgres-entrypoint.sh"]', '--cmd=["postgres"]', "--port=5432"]
    adds = [(tar, "/"), (run_dir, "/")]
    commit(img.name, key, "scratch", adds, [*env, *config, "--stop-signal=SIGINT"])


def containers(of: tuple[str, ...]) -> list[str]:
    """The ids of buildah's working containers of these images."""
    listed = run("buildah", "containers", "--format", "{{.ContainerID}} {{.ImageName}}")
    rows = [line.split(maxsplit=1) for line in listed.splitlines() if line.strip()]
    return [row[0] for row in rows if len(row) == 2 and row[1] in of]


def dockerfile_build(repo: Path, log: Path, img: Image, key: str, tmp: Path) -> None:
    """The repository's Dockerfile, as is, with its ARG defaults; the layer cache kept.
    The RUN steps see this machine's CA bundle (the network's proxy may re-sign TLS; Debian's
    pip reads that bundle), mounted over the image's own: never in a layer."""
    file = repo / "Dockerfile"
    args = [f"{k}={v}" for k, v in dockerfile_args(file).items()]
    cmd = [
        "buildah",
        "bud",
        "--runtime=runc",  # crun refuses this VM's hybrid cgroups
        "--layers",
        "--pull-never",
        "--format=docker",
        "--network=host",
        f"--file={file}",
        f"--tag={img.name}",
        "--volume=/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
        *[f"--build-arg={a}" for a in args],
    ]
    try:
        with open(log, "w") as out:
            done = subprocess.run(
                ["nice", "-n", "5", *cmd, repo], stdout=out, stderr=subprocess.STDOUT
            )
    finally:
        # buildah 1.28 leaves a (mounted) working container of each base a stage copies
        # from, one more set per build: removed, earlier builds' too.
        for ctr in containers(of=img.bases):
            subprocess.run(["buildah", "rm", ctr], capture_output=True)
    if done.returncode != 0:
        tail = [ln for ln in log.read_text().splitlines() if ln.strip()][-1:] or ["no output"]
        raise ImageError(f"buildah bud of {file} failed: {tail[0]} (all of it in {log})")
    # The key labelled afterwards: a --label would enter every layer's cache key.
    commit(img.name, key, img.name, [], [])
