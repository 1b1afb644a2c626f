"""Cache keys: when may a stage be skipped, as TFX decides it.

A stage's cache key is its input artifacts' content fingerprints, the config values its
component declares it reads, what it reads from outside the pipeline (if it declares it),
and the source of every module of ours it can execute. Keys follow content, not upstream
keys: a stage that re-ran and produced the same bytes leaves everything after it cached.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

OURS = "dae"


def _imported(path: Path, package: str) -> frozenset[str]:
    """Every module name an import statement in `path` may bind, wherever the statement is
    (inside functions too: lazy imports run as surely as the others)."""
    stat = path.stat()
    return _parsed(str(path), package, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=512)
def _parsed(path: str, package: str, _mtime_ns: int, _size: int) -> frozenset[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(Path(path).read_bytes(), path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(n for n in names if n == OURS or n.startswith(OURS + "."))


def _source(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # an attribute, not a module (`from x import f`)
        return None
    origin = spec.origin if spec else None
    return Path(origin) if origin and origin.endswith(".py") else None


def closure(module: str) -> dict[str, Path]:
    """Our modules that `module` can execute: its imports, transitively, and the packages
    they live in."""
    found: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = _source(name)
        if path is None:
            continue
        found[name] = path
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        parents = [name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)]
        todo += [*_imported(path, package), *parents]
    return found


def code_fingerprint(component: ModuleType | str) -> str:
    """The source of every module of ours the component (a module, or its name) can run."""
    if isinstance(component, ModuleType):
        component = component.__name__
    elif not isinstance(component, str):  # a stand-in (tests): its run function's code
        return hashlib.sha256(component.run.__code__.co_code).hexdigest()
    digest = hashlib.sha256()
    for name, path in sorted(closure(component).items()):
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_key(stage: str, inputs: dict[str, str], params: dict, code: str, extra: str = "") -> str:
    blob = json.dumps(
        {"stage": stage, "inputs": inputs, "params": params, "code": code, "extra": extra},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


RUNNER_SETTINGS = ("pipeline_name", "cache", "metadata_url")  # the runner's, not a stage's


def _leaves(data: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        out |= _leaves(value, path + ".") if isinstance(value, dict) else {path: value}
    return out


def unread_settings(config, specs) -> list[str]:
    """Values set away from their default that no stage reads with this config (say,
    tune.max_trials under Hyperband), as "path=value"."""
    default = _leaves(type(config)().to_dict())
    changed = {p: v for p, v in _leaves(config.to_dict()).items() if default.get(p) != v}
    read = set().union(*(spec.values(config) for spec in specs))
    return [
        f"{path}={value}"
        for path, value in changed.items()
        if path.split(".")[0] not in RUNNER_SETTINGS
        and not any(path == r or path.startswith(r + ".") for r in read)
    ]
