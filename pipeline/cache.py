"""Cache keys and fingerprints: when may a stage be skipped, as TFX decides it.

A stage's cache key is its input artifacts' content fingerprints, the config values it
reads, and the source of the code it runs. Keys follow content, not upstream keys: a stage
that re-ran and produced the same bytes leaves everything after it cached.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
from pathlib import Path
from types import ModuleType

from dae.components.push import PROVENANCE
from dae.serving.export import latest_version

# The config each stage's behaviour depends on; a stage not listed depends on all of it.
PARAMS = {
    "ingest": ("seed", "data", "beam.num_shards"),
    "validate": ("validate",),
    "transform": ("seed", "noise", "beam"),
    "tune": ("seed", "model", "tune"),
    "train": ("seed", "model", "train", "noise"),
    "evaluate": ("evaluate", "push.model_name"),
    "push": ("push",),
}
OUR_PACKAGES = ("components", "serving", "pipeline")


def parameters(stage: str, config: dict) -> dict:
    paths = PARAMS.get(stage)
    if paths is None:
        return config
    out = {}
    for path in paths:
        value = config
        for part in path.split("."):
            value = value[part]
        out[path] = value
    return out


def code_fingerprint(module: ModuleType) -> str:
    """The component's source and that of every module of ours it uses."""
    if not isinstance(module, ModuleType):  # a stand-in (tests): its run function's code
        return hashlib.sha256(module.run.__code__.co_code).hexdigest()
    names = {module.__name__}
    for value in vars(module).values():
        owner = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
        if owner and owner.split(".")[0] in OUR_PACKAGES:
            names.add(owner)
    digest = hashlib.sha256()
    for name in sorted(names):
        mod = sys.modules.get(name)
        source = getattr(mod, "__file__", None)
        if source and Path(source).is_file():
            digest.update(name.encode() + b"\0" + Path(source).read_bytes())
    return digest.hexdigest()


def fingerprint_dir(path: Path) -> str:
    """Content fingerprint of an artifact folder: every file's relative path and bytes."""
    digest = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f.name.startswith(".") or f.name == "_SUCCESS":
            continue
        digest.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def served_model_sha(version_dir: Path) -> str | None:
    path = Path(version_dir) / "assets.extra" / PROVENANCE
    return json.loads(path.read_text()).get("model_sha256") if path.is_file() else None


def baseline_identity(config, serving_dir: Path, model_dir: Path) -> str:
    """What the evaluator compares against. No baseline and a baseline that is this very
    model bless alike, so they key alike: a re-run after a push is still a cache hit."""
    base = Path(serving_dir) / config.push.model_name
    version = latest_version(base)
    if version is None:
        return "none"
    served = served_model_sha(base / str(version))
    model_file = Path(model_dir) / "model.keras"
    if model_file.is_file() and served == file_sha256(model_file):
        return "none"
    return f"{version}:{served}"


def source_identity(config) -> str:
    """What ingest reads from outside the pipeline: the prepared TFDS files (names, sizes,
    times; cheap), so re-preparing a dataset is a cache miss."""
    name = config.data.dataset.split(":")[0].split("/")[0]
    folder = Path(config.data.data_dir).expanduser() / name
    if not folder.is_dir():
        return "absent"
    listing = sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*") if p.is_file()
    )  # fmt: skip
    return hashlib.sha256(repr(listing).encode()).hexdigest()


def cache_key(stage: str, inputs: dict[str, str], params: dict, code: str, extra: str = "") -> str:
    blob = json.dumps(
        {"stage": stage, "inputs": inputs, "params": params, "code": code, "extra": extra},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()
