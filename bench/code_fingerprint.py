"""What a stage's code fingerprint costs at start-up: the per-stage import closure (parsed
once per process) beside hashing the whole package's source, measured in one run.

  .venv/bin/python bench/code_fingerprint.py
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from dae.pipeline import cache
from dae.pipeline.dag import DAG


def whole_package() -> str:
    import dae

    roots = {Path(dae.__file__).parent}
    for package in ("pipeline", "components", "serving"):
        roots.add(Path(__import__(f"dae.{package}", fromlist=["_"]).__file__).parent)
    digest = hashlib.sha256()
    for root in sorted(roots):
        for path in sorted(root.rglob("*.py")):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def timed(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e3


def main() -> None:
    cache._parsed.cache_clear()
    cold = timed(lambda: [cache.code_fingerprint(n.component) for n in DAG])
    warm = timed(lambda: [cache.code_fingerprint(n.component) for n in DAG], 20)
    whole = timed(whole_package, 20)
    sizes = {n.name: len(cache.closure(n.component.__name__)) for n in DAG}
    print(f"per-stage closures, {len(DAG)} stages, first run: {cold:7.1f} ms")
    print(f"per-stage closures, {len(DAG)} stages, parsed:    {warm:7.1f} ms")
    print(f"whole package source hash:             {whole:7.1f} ms")
    print(f"closure / whole (first run): {cold / whole:.1f}x")
    print("modules per stage: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
