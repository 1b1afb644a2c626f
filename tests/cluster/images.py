"""The cluster's container images, built here: no registry is reachable, so the Dockerfile's
bases are stand-ins (Debian's packages through mmdebstrap, Beam's boot binary, Beam's Flink job
server jar), the Dockerfile is then built as is with buildah, and Argo's executor, pause and
PostgreSQL are made the same way. Each image is exported as a docker archive that names it as
the manifests do (`ctr -n k8s.io images import` loads it under those names) into
`${XDG_CACHE_HOME:-~/.cache}/dae/cluster/images/<key>/`, the key hashing what went into it: a
changed source rebuilds dae's image, not the bases. A build goes into a `.partial-` folder
renamed when complete. `python tests/cluster/images.py` (`make cluster-images`) builds what is
missing and prints one `name archive` line per image. Standard library only (run by `make`
before any venv)."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

from image_inputs import context_inputs, flink_job_server_jar

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().with_name("images")
KEY_LABEL = "org.dae.cluster.key"
RECIPE = 2  # bump when a build function changes what it makes
TOOLS = ("mmdebstrap", "buildah", "skopeo")
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
ARGO_VERSION = "v3.7.18"  # the controller's default executor image is argoexec:<its version>
# containerd 1.6's default sandbox_image, and kubelet 1.34's (kubeadm's) pause: both names.
PAUSE_NAMES = ("registry.k8s.io/pause:3.10.1", "registry.k8s.io/pause:3.6")


class ImageError(RuntimeError):
    """One line saying what is missing or which step failed."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dae" / "cluster" / "images"


def docker_ref(name: str) -> str:
    """The name as containerd and the kubelet normalise it (`dae:0.1.0` is
    `docker.io/library/dae:0.1.0`)."""
    first, _, rest = name.partition("/")
    if not rest:
        return f"docker.io/library/{name}"
    if "." in first or ":" in first or first == "localhost":
        return name
    return f"docker.io/{name}"


def dockerfile_args(dockerfile: Path) -> dict[str, str]:
    """The Dockerfile's ARG defaults (the build passes them as they are)."""
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", dockerfile.read_text(), re.M))


def dockerfile_bases(dockerfile: Path) -> list[str]:
    """The images the Dockerfile's FROM lines name, its ARG defaults filled in (stage names
    like `base` are not images)."""
    args = dockerfile_args(dockerfile)
    froms = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M)
    filled = [re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], f) for f in froms]
    return [docker_ref(f) for f in filled if ":" in f or "/" in f]


def manifest_image(path: Path, pattern: str) -> str:
    """The `image:` of a manifest's container matching pattern (the name Pods will ask for)."""
    found = re.search(rf"^\s*image:\s*({pattern}\S*)\s*$", path.read_text(), re.M)
    if not found:
        raise ImageError(f"{path} has no image matching {pattern!r}")
    return docker_ref(found[1])


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


def beam_sdk(img: Image, key: str, tmp: Path) -> None:
    """Beam's Python SDK image where the Dockerfile relies on it: its boot binary."""
    boot = tmp / "boot"
    shutil.copyfile(binary("boot"), boot)
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


def dae(img: Image, key: str, tmp: Path) -> None:
    """The repository's Dockerfile, as is, with its ARG defaults; the layer cache kept.
    The RUN steps see this machine's CA bundle (the network's proxy may re-sign TLS; Debian's
    pip reads that bundle), mounted over the image's own: never in a layer."""
    dockerfile = REPO / "Dockerfile"
    args = [f"{k}={v}" for k, v in dockerfile_args(dockerfile).items()]
    cmd = [
        "buildah",
        "bud",
        "--runtime=runc",  # crun refuses this VM's hybrid cgroups
        "--layers",
        "--pull-never",
        "--format=docker",
        "--network=host",
        f"--label={KEY_LABEL}={key}",
        f"--file={dockerfile}",
        f"--tag={img.name}",
        "--volume=/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
        *[f"--build-arg={a}" for a in args],
    ]
    log = cache_root() / "dae-build.log"
    with open(log, "w") as out:
        done = subprocess.run(["nice", "-n", "5", *cmd, REPO], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = [ln for ln in log.read_text().splitlines() if ln.strip()][-1:] or ["no output"]
        raise ImageError(f"buildah bud of {dockerfile} failed: {tail[0]} (all of it in {log})")


def binary(name: str) -> Path:
    """One of the cluster's Go binaries (tests/cluster/build.py builds what is missing)."""
    import build  # beside this file: the script's folder is on sys.path, as under pytest

    try:
        return build.binaries() / name
    except build.BuildError as e:
        raise ImageError(str(e)) from e


def catalogue() -> list[Image]:
    """Every image, bases first, under the names the Dockerfile and the manifests use."""
    dockerfile, k8s = REPO / "Dockerfile", REPO / "k8s"
    python, sdk, jobserver = (
        next(b for b in dockerfile_bases(dockerfile) if part in b)
        for part in ("/python:", "_sdk:", "_job_server:")
    )
    tag = re.search(r"newTag:\s*(\S+)", (k8s / "base/kustomization.yaml").read_text())[1]
    prod = re.search(r"newName:\s*(\S+)", (k8s / "overlays/prod/kustomization.yaml").read_text())
    args = dockerfile_args(dockerfile)
    jar = partial(jar_path, args["BEAM_VERSION"], args["FLINK_VERSION"])
    return [
        Image(python, (), lambda: [PYTHON_PACKAGES, DEBIAN, SLIM, PATH], python_base),
        Image(sdk, (), lambda: [binary("boot")], beam_sdk, (python,)),
        Image(jobserver, (), lambda: [jar()], partial(flink_job_server, jar)),
        Image(
            docker_ref(f"dae:{tag}"),
            (f"{prod[1]}:{tag}",),
            lambda: context_inputs(REPO),
            dae,
            (python, sdk, jobserver),
        ),
        Image(
            f"quay.io/argoproj/argoexec:{ARGO_VERSION}",
            (),
            lambda: [binary("argoexec")],
            static_image(
                lambda: {"bin/argoexec": binary("argoexec")}, ['--entrypoint=["argoexec"]']
            ),
        ),
        Image(
            PAUSE_NAMES[0],
            PAUSE_NAMES[1:],
            lambda: [binary("pause")],
            static_image(
                lambda: {"pause": binary("pause")},
                ['--entrypoint=["/pause"]', "--user=65535:65535"],
            ),
        ),
        Image(
            manifest_image(k8s / "components/postgres/postgres.yaml", "postgres:"),
            (),
            lambda: [DEBIAN, SLIM, HERE / "postgres-entrypoint.sh", HERE / "postgres-layout.sh"],
            postgres,
        ),
    ]


@cache
def jar_path(beam: str, flink: str) -> Path:
    return flink_job_server_jar(cache_root().parent / "downloads", beam, flink)


def key(img: Image, keys: dict[str, str]) -> str:
    """`<name>-<tag>-<hash>`: the hash covers the recipe, the inputs (files by content) and
    the keys of the images it is built from."""
    digest = hashlib.sha256(json.dumps([RECIPE, img.name, img.tags]).encode())
    for value in [*img.inputs(), *(keys[b] for b in img.bases)]:
        for part in value if isinstance(value, list) else [value]:
            digest.update(
                file_digest(part) if isinstance(part, Path) else json.dumps(part).encode()
            )
    slug = re.sub(r"[^\w.-]", "-", img.name.rsplit("/", 1)[-1])
    return f"{slug}-{digest.hexdigest()[:12]}"


def file_digest(path: Path) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def stored_key(name: str) -> str | None:
    """The key label of the image buildah's storage holds under name, if any."""
    found = subprocess.run(
        ["buildah", "inspect", "--type=image", name], capture_output=True, text=True
    )
    if found.returncode != 0:
        return None
    return (json.loads(found.stdout)["OCIv1"]["config"].get("Labels") or {}).get(KEY_LABEL)


def into_storage(img: Image, key: str, archive: Path, keys: dict[str, str], cache: Path) -> None:
    """Makes buildah's storage hold img at key: already there, loaded from its archive, or
    built (its bases first)."""
    if stored_key(img.name) == key:
        return
    if archive.is_file():
        run(
            "skopeo",
            "copy",
            "--quiet",
            f"docker-archive:{archive}:{img.name}",
            f"containers-storage:{img.name}",
        )
        return
    for base in img.bases:
        base_img = next(i for i in catalogue() if i.name == base)
        into_storage(base_img, keys[base], cache / keys[base] / "image.tar", keys, cache)
    with tempfile.TemporaryDirectory(prefix="dae-image-") as tmp:
        img.build(img, key, Path(tmp))


def export(img: Image, archive: Path) -> None:
    """A docker archive naming the image by all its names (containerd imports each)."""
    extra = [f"--additional-tag={t}" for t in img.tags]
    run(
        "skopeo",
        "copy",
        "--quiet",
        *extra,
        f"containers-storage:{img.name}",
        f"docker-archive:{archive}:{img.name}",
    )


def images() -> dict[str, Path]:
    """Image name -> docker archive, building what is missing. Concurrent callers wait on a
    lock instead of building twice."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise ImageError(f"{', '.join(missing)} not found: apt-get install {' '.join(missing)}")
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    keys: dict[str, str] = {}
    found: dict[str, Path] = {}
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for img in catalogue():
            keys[img.name] = key(img, keys)
            done = cache / keys[img.name]
            if not done.is_dir():
                build_into(img, keys, done)
            found[img.name] = done / "image.tar"
    return found


def build_into(img: Image, keys: dict[str, str], done: Path) -> None:
    """Builds img into storage and exports it into a `.partial-` folder renamed to done."""
    for leftover in done.parent.glob(f".partial-{done.name}-*"):  # a killed build's
        shutil.rmtree(leftover)
    partial = done.parent / f".partial-{done.name}-{os.getpid()}"
    partial.mkdir()
    try:
        print(f"images: building {img.name}", file=sys.stderr)
        start = time.monotonic()
        into_storage(img, keys[img.name], done / "image.tar", keys, done.parent)
        for tag in img.tags:
            run("buildah", "tag", img.name, tag)
        built = time.monotonic() - start
        export(img, partial / "image.tar")
        took = {"build_s": round(built, 1), "export_s": round(time.monotonic() - start - built, 1)}
        took["bytes"] = (partial / "image.tar").stat().st_size
        (partial / "build.json").write_text(json.dumps(took) + "\n")
        print(f"images: {img.name}: {took}", file=sys.stderr)
        partial.rename(done)
        slug = done.name.rsplit("-", 1)[0]
        for old in done.parent.glob(f"{slug}-*"):  # earlier keys of this image
            if old != done and re.fullmatch(rf"{re.escape(slug)}-[0-9a-f]{{12}}", old.name):
                shutil.rmtree(old)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def main() -> int:
    try:
        for name, archive in images().items():
            print(name, archive)
    except (ImageError, RuntimeError) as e:
        print(f"cluster-images: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
