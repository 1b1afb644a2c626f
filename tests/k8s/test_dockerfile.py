"""The Dockerfile (no Docker engine needed): it builds what the manifests run. Its entrypoint
is the `dae` console script, it installs the runtime lock (requirements.lock) and nothing of
the development lock (requirements-dev.lock: pytest, ruff, kubernetes-validate, import-linter
and what only they need), prepares the data where the mounted config looks for it, runs as
the uid the Pods require, and bundles Beam pieces of the same release as the Beam in the
lock."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import shlex
import tomllib

import pytest
from k8s_support import K8S, REPO, by_kind, containers, find, is_dae, pod_templates

from dae.pipeline.config import load_config

DOCKERFILE = REPO / "Dockerfile"
DEV_TOOLS = {"pytest", "ruff", "kubernetes-validate", "import-linter", "grimp"}
# What pip, setuptools' build and the venv bring; not pinned by the locks.
INSTALLER = {"pip", "setuptools", "wheel"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages, current = {}, None
    for word, rest in _instructions():
        if word == "FROM":
            parts = rest.split()
            current = (
                parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else f"#{len(stages)}"
            )
            stages[current] = [(word, rest)]
        elif current is not None:
            stages[current].append((word, rest))
    return stages


def _args() -> dict[str, str]:
    return dict(
        rest.split("=", 1) for word, rest in _instructions() if word == "ARG" and "=" in rest
    )


def _expand(text: str) -> str:
    for name, value in _args().items():
        text = text.replace("${" + name + "}", value)
    return text


def _lock(name: str = "requirements.lock") -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_norm(name.strip())] = version.strip()
    return pins


def _closure(requirements: list[str]) -> set[str]:
    """The distributions these requirements pull in on this platform (the installed venv's
    metadata), extras followed."""
    from packaging.requirements import Requirement

    seen: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name, extras = _norm(req.name), set(req.extras)
        if name in seen and extras <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | extras
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue  # reported by the caller: not in the lock
        for spec in map(Requirement, requires):
            envs = [{"extra": e} for e in seen[name] or {""}]
            if spec.marker is None or any(spec.marker.evaluate(e) for e in envs):
                todo.append(spec)
    return set(seen)


def _runs(stage: str) -> str:
    return " && ".join(rest for word, rest in _stages()[stage] if word == "RUN")


def _final() -> list[tuple[str, str]]:
    return list(_stages().values())[-1]


def test_entrypoint_is_the_dae_console_script():
    final = _final()
    (entrypoint,) = [json.loads(rest) for word, rest in final if word == "ENTRYPOINT"]
    assert entrypoint == ["dae"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["dae"] == "dae.cli:main"
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env, "`dae` must be on PATH"
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in env, "Beam workers use the image's venv"


def test_base_image_is_slim_python_of_requires_python():
    base = _stages()["base"][0][1].split()[0]
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-bookworm)?(@sha256:[0-9a-f]{64})?", base)
    assert requires == ">=3.11,<3.12"


def test_installs_the_lock_then_dae_without_resolving():
    build = _runs("build")
    assert "pip install --require-virtualenv -r /src/requirements.lock" in build
    assert "pip install --require-virtualenv --no-deps /src" in build
    assert "pip check" in build
    copies = [rest.split() for word, rest in _stages()["build"] if word == "COPY"]
    assert ["requirements.lock", "/src/requirements.lock"] in copies
    everything = " ".join(rest for _, rest in _instructions())
    assert "requirements-dev" not in everything, "the image installs the runtime lock only"
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = setuptools["package-dir"]
    for package in setuptools["packages"]:  # from its folder: package-dir's, or its own name
        parent = max(
            (p for p in dirs if package == p or package.startswith(p + ".")), key=len, default=None
        )
        top = dirs[parent] if parent else package.split(".")[0]
        assert [top, f"/src/{top}"] in copies, f"the image lacks the {package} package"
    for tool in DEV_TOOLS:
        assert not re.search(rf"pip install[^&]*\b{tool}\b", everything), tool


def test_the_runtime_lock_holds_no_development_tool():
    runtime, dev = _lock(), _lock("requirements-dev.lock")
    assert not DEV_TOOLS & set(runtime), "test and lint tools belong in requirements-dev.lock"
    assert set(dev) >= DEV_TOOLS
    assert not set(runtime) & set(dev), "each pin in one lock"
    lines = (REPO / "requirements-dev.lock").read_text().splitlines()
    assert "-r requirements.lock" in lines, "installing the dev lock installs both"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for requirement in extras["dev"]:
        name, version = requirement.split("==")
        assert dev[_norm(name)] == version, requirement


def test_the_runtime_lock_has_what_dae_needs_and_only_that():
    """Everything dae's dependencies pull in is pinned in requirements.lock; nothing in
    requirements-dev.lock is needed by them (so the image, which installs the runtime lock
    only, lacks nothing)."""
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    needed = _closure(dependencies) - INSTALLER
    runtime, dev = _lock(), _lock("requirements-dev.lock")
    assert needed <= set(runtime), f"not in requirements.lock: {sorted(needed - set(runtime))}"
    assert not needed & set(dev), f"the runtime needs: {sorted(needed & set(dev))}"
    tools = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    only_dev = _closure(tools["dev"]) - needed - INSTALLER
    assert only_dev == set(dev), f"dev lock vs what only the tools need: {only_dev ^ set(dev)}"


def test_dockerignore_admits_what_the_dockerfile_copies():
    rules = [
        r.strip()
        for r in (REPO / ".dockerignore").read_text().splitlines()
        if r.strip() and not r.startswith("#")
    ]

    def included(path: str) -> bool:
        keep = True
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negate
        return keep

    for word, rest in _instructions():
        if word == "COPY" and "--from=" not in rest:
            for source in shlex.split(rest)[:-1]:
                assert included(source), f"COPY {source}: excluded by .dockerignore"
                assert (REPO / source).exists(), f"COPY {source}: no such file"
    assert not included(".venv") and not included("dae-root") and not included(".git")


def test_data_is_prepared_at_build_time_where_the_config_reads_it():
    data = _runs("data")
    argv = shlex.split(data.split("&&")[1])
    assert argv[:3] == ["dae", "data", "prepare"]
    assert {"mnist", "fashion_mnist"} <= set(argv)
    data_dir = argv[argv.index("--data-dir") + 1]
    config = load_config(K8S / "base" / "config.yaml", "default", [])
    assert config.data.data_dir == data_dir
    assert config.data.dataset in ("mnist", "fashion_mnist")
    final = _final()
    assert f"--from=data {data_dir} {data_dir}" in [r for w, r in final if w == "COPY"]


def test_runs_as_the_uid_the_pods_require(rendered):
    (user,) = [rest for word, rest in _final() if word == "USER"]
    uid, gid = (int(x) for x in user.split(":"))
    assert uid >= 10000
    for variant, objects in rendered.items():
        for name, pod in pod_templates(objects):
            for c in containers(pod):
                if is_dae(c):
                    sc = {**pod["spec"]["securityContext"], **c.get("securityContext", {})}
                    assert (sc["runAsUser"], sc["runAsGroup"]) == (uid, gid), (variant, name)


def test_beam_and_serving_images_match_the_lock(rendered):
    lock = _lock()
    args = _args()
    assert args["BEAM_VERSION"] == lock["apache-beam"]
    froms = {
        rest.split()[-1]: _expand(rest.split()[0]) for w, rest in _instructions() if w == "FROM"
    }
    assert froms["beam-sdk"] == f"apache/beam_python3.11_sdk:{lock['apache-beam']}"
    flink_job_server = f"apache/beam_flink{args['FLINK_VERSION']}_job_server:{lock['apache-beam']}"
    assert froms["beam-flink-job-server"] == flink_job_server
    copies = " ".join(rest for w, rest in _final() if w == "COPY")
    assert "--from=beam-sdk /opt/apache/beam/boot /opt/apache/beam/boot" in copies
    prod = rendered["prod"]
    flink = find(prod, "FlinkDeployment", "dae-flink")
    assert flink["spec"]["flinkVersion"] == "v" + args["FLINK_VERSION"].replace(".", "_")
    template = find(prod, "WorkflowTemplate", "dae-pipeline")
    (submit,) = [t["container"] for t in template["spec"]["templates"] if t["name"] == "transform"]
    options = next(a for a in submit["args"] if a.startswith("beam.options="))
    jar = re.search(r"--flink_job_server_jar=([^,\]]+)", options).group(1)
    assert f"beam-runners-flink-job-server.jar {jar}" in copies
    # TF Serving: the release of the tensorflow-serving-api client in the lock.
    for overlay in ("dev", "prod"):
        deployment = by_kind(rendered[overlay], "Deployment")["dae-serving"]
        for c in containers(deployment["spec"]["template"]):
            assert c["image"] == f"tensorflow/serving:{lock['tensorflow-serving-api']}"
    for variant in ("dev+kserve", "prod+kserve"):
        isvc = find(rendered[variant], "InferenceService", "denoiser")
        assert (
            isvc["spec"]["predictor"]["model"]["runtimeVersion"] == lock["tensorflow-serving-api"]
        )


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_dae_image_is_the_one_the_dockerfile_builds(rendered, overlay):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    images = {
        c["image"]
        for _, pod in pod_templates(rendered[overlay])
        for c in containers(pod)
        if is_dae(c)
    }
    assert len(images) == 1, images
    repository, tag = images.pop().rsplit(":", 1)
    assert repository.split("/")[-1] == "dae" and tag == version
