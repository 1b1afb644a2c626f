"""What every dae.compat patch checks with: the library's module and attribute (defined on
that very class, with the signature the patch was written against) still exist, else a
CompatError naming the library and its installed version."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect

MARK = "__dae_compat__"  # on every function a patch installs: the patch's name
DISTRIBUTIONS = {
    "tensorflow": "tensorflow",
    "keras": "keras",
    "keras_tuner": "keras-tuner",
    "apache_beam": "apache-beam",
    "bm3d": "bm3d",
}


class CompatError(RuntimeError):
    """A library no longer has what a dae.compat patch patches or uses."""


def version(lib: str) -> str:
    """The installed version of `lib` (an import name), for the error messages."""
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(lib, lib))
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _fail(lib: str, patch: str, what: str, problem: str = "is gone"):
    raise CompatError(f"{lib} {version(lib)}: {what} {problem}; dae.compat.{patch} needs updating")


def _module(lib: str, patch: str, name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        _fail(lib, patch, f"module {name}")


def _attr(lib: str, patch: str, owner, name: str, params: tuple[str, ...] | None = None):
    """owner.name; on a class it must be defined by that class itself (an inherited one is
    not what the patch was written against). With `params`: a callable taking exactly
    those, as the patch calls or replaces it."""
    if isinstance(owner, type):
        label, found = f"{owner.__module__}.{owner.__qualname__}.{name}", name in vars(owner)
    else:
        label, found = f"{owner.__name__}.{name}", hasattr(owner, name)
    if not found:
        _fail(lib, patch, label)
    value = getattr(owner, name)
    if params is not None:
        try:
            actual = tuple(inspect.signature(value).parameters)
        except (TypeError, ValueError):
            actual = ("?",)
        if actual != params:
            _fail(lib, patch, label, f"takes ({', '.join(actual)}), not ({', '.join(params)})")
    return value


def _mark(fn, patch: str):
    setattr(fn, MARK, patch)
    return fn


def patched(fn) -> bool:
    return getattr(fn, MARK, None) is not None
