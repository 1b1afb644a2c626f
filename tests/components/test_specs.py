"""Every component declares the config it reads: each `cfg.<section>.<key>` its module
touches is in its declared parameters (so it is in its cache key)."""

import ast
import inspect

import pytest

from dae.pipeline.config import Config
from dae.pipeline.dag import DAG


def _config_paths(module) -> set[str]:
    """Dotted config paths read as cfg.a.b / ctx.config.a.b in the module's source."""
    fields = Config().to_dict()
    paths = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if not isinstance(node, ast.Attribute) or isinstance(
            getattr(node, "_parent", None), ast.Attribute
        ):
            continue
        chain, cur = [], node
        while isinstance(cur, ast.Attribute):
            chain.append(cur.attr)
            cur = cur.value
        chain.reverse()
        if isinstance(cur, ast.Name) and cur.id == "cfg":
            pass
        elif isinstance(cur, ast.Name) and cur.id == "ctx" and chain[:1] == ["config"]:
            chain = chain[1:]
        else:
            continue
        keys, level = [], fields
        for name in chain:
            name = "validate" if name == "validate_" else name
            if not isinstance(level, dict) or name not in level:
                break
            keys.append(name)
            level = level[name]
        if keys:
            paths.add(".".join(keys))
    return paths


def _covered(path: str, declared: set[str]) -> bool:
    return any(path == d or path.startswith(d + ".") or d.startswith(path + ".") for d in declared)


@pytest.mark.parametrize("node", DAG, ids=lambda n: n.name)
def test_a_component_declares_the_config_it_reads(node):
    declared = set(node.component.SPEC.values(Config()))
    read = _config_paths(node.component)
    assert read, f"{node.name}: found no config reads (the scan is broken)"
    missing = {p for p in read if not _covered(p, declared)}
    assert not missing, f"{node.name} reads {sorted(missing)} but declares {sorted(declared)}"


@pytest.mark.parametrize("node", DAG, ids=lambda n: n.name)
def test_a_preflight_check_is_declared(node):
    """A module's preflight() runs only if its SPEC names it (the runner reads the SPEC)."""
    check = getattr(node.component, "preflight", None)
    assert node.component.SPEC.preflight is check
