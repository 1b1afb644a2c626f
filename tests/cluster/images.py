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
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from functools import cache, partial
from pathlib import Path

import build  # beside this file: the script's folder is on sys.path, as under pytest
from image_inputs import context_inputs, flink_job_server_jar
from image_recipes import (
    DEBIAN,
    HERE,
    KEY_LABEL,
    PATH,
    PYTHON_PACKAGES,
    SLIM,
    Image,
    ImageError,
    beam_sdk,
    dockerfile_args,
    dockerfile_build,
    flink_job_server,
    postgres,
    python_base,
    run,
    static_image,
)

REPO = Path(__file__).resolve().parents[2]
RECIPE = 2  # bump when a build function changes what it makes
TOOLS = ("mmdebstrap", "buildah", "skopeo", "runc")
# The controller's default executor image is argoexec:<its version>.
ARGO_VERSION = build.argo_version()
# containerd 1.6's default sandbox_image, and kubelet 1.34's (kubeadm's) pause: both names.
PAUSE_NAMES = ("registry.k8s.io/pause:3.10.1", "registry.k8s.io/pause:3.6")


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


def binary(name: str) -> Path:
    """One of the cluster's Go binaries (tests/cluster/build.py builds what is missing)."""
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
    boot = partial(binary, "boot")
    return [
        Image(python, (), lambda: [PYTHON_PACKAGES, DEBIAN, SLIM, PATH], python_base),
        Image(sdk, (), lambda: [binary("boot")], partial(beam_sdk, boot), (python,)),
        Image(jobserver, (), lambda: [jar()], partial(flink_job_server, jar)),
        Image(
            docker_ref(f"dae:{tag}"),
            (f"{prod[1]}:{tag}",),
            lambda: context_inputs(REPO),
            partial(dockerfile_build, REPO, cache_root() / "dae-build.log"),
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
