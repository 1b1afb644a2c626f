"""The cluster's images (tests/cluster/images.py): the build context and cache keys as Docker
reads them, then the built images themselves, run with buildah as the manifests run them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import images
import pytest
from image_inputs import context_files

REPO = images.REPO


def test_context_is_what_dockerignore_admits(tmp_path):
    """The files a `docker build` would send: the re-included folders minus caches."""
    shutil.copyfile(REPO / ".dockerignore", tmp_path / ".dockerignore")
    for rel in ("dae/cli.py", "dae/__pycache__/cli.cpython-311.pyc", "dae/x.pyc",
                "requirements.lock", "requirements-dev.lock", "tests/test_x.py",
                "Dockerfile", "serving/a/b.py", "daemon/x.py"):  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    assert context_files(tmp_path) == ["dae/cli.py", "requirements.lock", "serving/a/b.py"]


@pytest.fixture
def repo_copy(tmp_path, monkeypatch):
    """images.py pointed at a copy of what its catalogue reads, the binaries and the jar
    stubbed (their content is an input like any other)."""
    paths = ["Dockerfile", ".dockerignore", "k8s/base/kustomization.yaml",
             "k8s/overlays/prod/kustomization.yaml", "k8s/components/postgres/postgres.yaml",
             *context_files(REPO)]  # fmt: skip
    for rel in paths:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / rel, tmp_path / rel)
    (tmp_path / "bin").mkdir()
    for name in ("boot", "argoexec", "pause", "job-server.jar"):
        (tmp_path / "bin" / name).write_text(name)
    monkeypatch.setattr(images, "REPO", tmp_path)
    monkeypatch.setattr(images, "binary", lambda name: tmp_path / "bin" / name)
    monkeypatch.setattr(images, "jar_path", lambda beam, flink: tmp_path / "bin" / "job-server.jar")
    return tmp_path


def all_keys() -> dict[str, str]:
    keys: dict[str, str] = {}
    for img in images.catalogue():
        keys[img.name] = images.key(img, keys)
    return keys


def test_a_changed_source_rebuilds_dae_not_the_bases(repo_copy):
    before = all_keys()
    (repo_copy / "dae/cli.py").write_text((repo_copy / "dae/cli.py").read_text() + "\n# edit\n")
    after = all_keys()
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"docker.io/library/dae:0.1.0"}
    (repo_copy / "bin/boot").write_text("another boot")
    changed = {name for name, k in all_keys().items() if after[name] != k}
    assert changed == {"docker.io/apache/beam_python3.11_sdk:2.77.0", "docker.io/library/dae:0.1.0"}


def test_names_follow_the_dockerfile_and_manifests(repo_copy):
    """A changed ARG or manifest tag renames the image (and so rebuilds it)."""
    dockerfile = repo_copy / "Dockerfile"
    dockerfile.write_text(
        dockerfile.read_text().replace("BEAM_VERSION=2.77.0", "BEAM_VERSION=2.99.0")
    )
    pg = repo_copy / "k8s/components/postgres/postgres.yaml"
    pg.write_text(pg.read_text().replace("postgres:15.17", "postgres:15.99"))
    names = {img.name for img in images.catalogue()}
    assert {
        "docker.io/apache/beam_python3.11_sdk:2.99.0",
        "docker.io/library/postgres:15.99",
    } <= names


# --- the built images (slow: a cold build takes many minutes; cached afterwards) -----------


@pytest.fixture(scope="module")
def built() -> dict[str, Path]:
    """Every image's archive, built first if missing; where that cannot be done here the
    tests skip with one line (a failure under DAE_REQUIRE_CLUSTER=1, as in .ci/run)."""
    missing = [t for t in images.TOOLS if shutil.which(t) is None]
    problem = f"{', '.join(missing)} not installed (make cluster-images)" if missing else ""
    if os.geteuid() != 0:
        problem = "building images needs root"
    if not problem:
        try:
            return images.images()
        except images.ImageError as e:
            problem = str(e)
    line = f"CLUSTER IMAGES NOT BUILT: {problem}"
    if os.environ.get("DAE_REQUIRE_CLUSTER") == "1":
        pytest.fail(f"{line} (DAE_REQUIRE_CLUSTER=1)", pytrace=False)
    pytest.skip(line)


def image_config(archive: Path) -> tuple[list[str], dict]:
    """(names, config) of a docker archive, as `ctr images import` reads them."""
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))[0]
        config = json.load(tar.extractfile(manifest["Config"]))["config"]
    return manifest["RepoTags"], config


@contextlib.contextmanager
def container(built: dict[str, Path], name: str):
    """A buildah container of the archive's image: the stored one when it is that build (its
    key label), else read from the archive."""
    archive = built[name]
    source = name if images.stored_key(name) == archive.parent.name else f"docker-archive:{archive}"
    made = subprocess.run(
        ["buildah", "from", "--pull-never", source], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    ctr = made.stdout.strip().splitlines()[-1]
    try:
        yield ctr
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)


def buildah_run(ctr: str, *cmd: str, user: str, env: dict[str, str] | None = None, net="") -> str:
    opts = [f"--env={k}={v}" for k, v in (env or {}).items()] + (
        [f"--network={net}"] if net else []
    )
    args = ("buildah", "run", "--runtime=runc", f"--user={user}", *opts, ctr, "--", *cmd)
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def slow(test):
    """Builds (or reuses) every image: minutes cold, seconds warm."""
    return pytest.mark.slow(pytest.mark.cluster(test))


@slow
@pytest.mark.parametrize(
    ("name", "user", "entrypoint", "cmd"),
    [
        ("docker.io/library/dae:0.1.0", "10001:10001", ["dae"], ["--help"]),
        ("quay.io/argoproj/argoexec:v3.7.18", "", ["argoexec"], None),
        ("registry.k8s.io/pause:3.10.1", "65535:65535", ["/pause"], None),
        ("docker.io/library/postgres:15.17", "", ["postgres-entrypoint.sh"], ["postgres"]),
    ],
)
def test_each_image_has_the_user_and_entrypoint_its_pods_expect(built, name, user, entrypoint, cmd):
    names, config = image_config(built[name])
    assert name in names
    got = (config.get("User") or "", config.get("Entrypoint"), config.get("Cmd"))
    assert got == (user, entrypoint, cmd)


@slow
def test_the_prod_overlay_name_is_in_the_dae_archive(built):
    names, _ = image_config(built["docker.io/library/dae:0.1.0"])
    assert "registry.example.com/dae:0.1.0" in names


@slow
def test_dae_runs_as_10001_with_its_prepared_data(built):
    with container(built, "docker.io/library/dae:0.1.0") as ctr:
        assert buildah_run(ctr, "id", "-u", user="10001:10001").strip() == "10001"
        assert "run the whole pipeline" in buildah_run(ctr, "dae", "--help", user="10001:10001")
        manifests = buildah_run(ctr, "dae", "argo", "compile", "--profile", "smoke",
                                user="10001:10001")  # fmt: skip
        assert "kind: WorkflowTemplate" in manifests
        listing = buildah_run(ctr, "ls", "/opt/dae/tensorflow_datasets", user="10001:10001")
        assert {"mnist", "fashion_mnist"} <= set(listing.split())


def file_in_image(archive: Path, path: str) -> bytes:
    """A file's content from the topmost layer of a docker archive that holds it."""
    with tarfile.open(archive) as outer:
        layers = json.load(outer.extractfile("manifest.json"))[0]["Layers"]
        for layer in reversed(layers):
            with (
                tarfile.open(fileobj=outer.extractfile(layer)) as tar,
                contextlib.suppress(KeyError),
            ):
                return tar.extractfile(path).read()
    raise FileNotFoundError(path)


def is_static_elf(data: bytes) -> bool:
    """An executable with no program interpreter (PT_INTERP): it runs without a libc."""
    assert data[:4] == b"\x7fELF" and data[4] == 2  # 64-bit
    phoff, phentsize, phnum = (int.from_bytes(data[o : o + n], "little") for o, n in
                               ((0x20, 8), (0x36, 2), (0x38, 2)))  # fmt: skip
    types = [int.from_bytes(data[phoff + i * phentsize :][:4], "little") for i in range(phnum)]
    return 3 not in types


@slow
def test_argoexec_and_pause_run_without_a_libc(built):
    """Both images are distroless-like (no libc): their binaries must be static."""
    argoexec = built["quay.io/argoproj/argoexec:v3.7.18"]
    assert is_static_elf(file_in_image(argoexec, "bin/argoexec"))
    assert is_static_elf(file_in_image(built["registry.k8s.io/pause:3.10.1"], "pause"))
    with container(built, "quay.io/argoproj/argoexec:v3.7.18") as ctr:
        assert "v3.7.18" in buildah_run(ctr, "argoexec", "version", user="8737")


@slow
def test_postgres_initialises_and_serves_as_999(built):
    """The manifest's way: uid 999, password from a file, PGDATA in a subfolder; the server
    then takes that password from another address and refuses another password (loopback
    is trusted, as in the official image). Host network, on a port of its own."""
    script = """
set -e
printf s3cret > /tmp/pw
postgres-entrypoint.sh postgres > /tmp/log 2>&1 &
ip=$(hostname -I | cut -d' ' -f1)
for i in $(seq 120); do pg_isready -q -h "$ip" -U dae -d dae && break; sleep 0.5; done
PGPASSWORD=s3cret psql -h "$ip" -U dae -d dae -Atc 'select current_user, current_database()'
if PGPASSWORD=wrong psql -h "$ip" -U dae -d dae -c 'select 1' 2>/dev/null; then exit 9; fi
pg_ctl stop -D "$PGDATA" -m fast -w > /dev/null
"""
    env = {
        "PGPORT": "54329",
        "POSTGRES_USER": "dae",
        "POSTGRES_DB": "dae",
        "POSTGRES_PASSWORD_FILE": "/tmp/pw",
        "PGDATA": "/var/lib/postgresql/data/pgdata",
    }
    with container(built, "docker.io/library/postgres:15.17") as ctr:
        out = buildah_run(ctr, "bash", "-c", script, user="999:999", env=env, net="host")
        assert out == "dae|dae\n"


@slow
def test_the_dockerfile_build_leaves_no_working_container(built):
    """buildah 1.28's `bud` leaves a mounted working container of each image a stage copies
    from, a set more per build: the build removes them (earlier ones included)."""
    bases = set(images.dockerfile_bases(REPO / "Dockerfile"))
    listed = subprocess.run(
        ["buildah", "containers", "--format", "{{.ImageName}}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert not bases & set(listed), listed
