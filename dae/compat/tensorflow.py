"""TensorFlow: its global gradient registry (which model loads fill and nothing empties),
a Session run without the Python shape check."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from dae.compat.checks import _attr, _fail, _mark, _module, patched

_REGISTERING = threading.local()  # .names: the set this thread's registrations go to


def tf_gradient_registry() -> dict:
    """TensorFlow's global gradient registry (name -> function), which tf.saved_model.load
    fills and nothing empties: a model server drops an unloaded version's entries."""
    lib, patch = "tensorflow", "tf_gradient_registry"
    ops = _module(lib, patch, "tensorflow.python.framework.ops")
    registry = getattr(_attr(lib, patch, ops, "_gradient_registry"), "_registry", None)
    if not isinstance(registry, dict):
        _fail(
            lib,
            patch,
            "tensorflow.python.framework.ops._gradient_registry._registry",
            "is not a dict",
        )
    return registry


@contextlib.contextmanager
def tf_gradients_registered() -> Iterator[set[str]]:
    """Yields a set that receives the name of every gradient this thread registers in
    TensorFlow's global gradient registry inside the block: a model's, as its load
    (tf.saved_model.load, in the loading thread) registers one per custom-gradient function
    under a fresh name. Attributed by thread, not by a before/after diff of the registry,
    which would also claim what a load in another thread registered meanwhile (a model
    server loads each model of a config file in its own thread). Patches
    Registry.register to note the names; checked: the gradient registry is a Registry,
    RegisterGradient registers through it and register(self, candidate, name) exists."""
    lib, patch = "tensorflow", "tf_gradients_registered"
    tf_gradient_registry()  # its own checks: the registry and its dict
    ops = _module(lib, patch, "tensorflow.python.framework.ops")
    registry = _module(lib, patch, "tensorflow.python.framework.registry")
    cls = _attr(lib, patch, registry, "Registry")
    register = _attr(lib, patch, cls, "register", ("self", "candidate", "name"))
    gradients = ops._gradient_registry
    if not isinstance(gradients, cls):
        _fail(lib, patch, "ops._gradient_registry", f"is not a {cls.__qualname__}")
    decorate = _attr(lib, patch, _attr(lib, patch, ops, "RegisterGradient"), "__call__")
    if "gradient_registry" not in decorate.__code__.co_names:
        _fail(lib, patch, "ops.RegisterGradient", "no longer registers in ops.gradient_registry")
    if not patched(register):
        original = register

        def register(self, candidate, name=None):
            original(self, candidate, name)
            names = getattr(_REGISTERING, "names", None)
            if names is not None and self is ops._gradient_registry:
                names.add(name or candidate.__name__)

        cls.register = _mark(register, patch)
    outer, names = getattr(_REGISTERING, "names", None), set()
    _REGISTERING.names = names
    try:
        yield names
    finally:
        _REGISTERING.names = outer
        if outer is not None:
            outer |= names


def tf_forget_gradients(names) -> None:
    """Drop these entries of the gradient registry (an unloaded model's)."""
    registry = tf_gradient_registry()
    for name in names:
        registry.pop(name, None)


def tf_session_run_unchecked(session, feeds: dict, fetches: list) -> list:
    """Run a TF1 session without Session.run's Python check of each fed value's shape
    against its placeholder: TF Serving (C++) feeds whatever the graph accepts, e.g. a [3]
    tensor into half_plus_two's [-1, 1] input. Feeds ({tensor: value}) and fetches are the
    graph's tensors, passed on as the TF_Outputs that Session's own C call takes."""
    lib, patch = "tensorflow", "tf_session_run_unchecked"
    client = _module(lib, patch, "tensorflow.python.client.session")
    params = ("self", "options", "feed_dict", "fetch_list", "target_list", "run_metadata")
    run = _attr(lib, patch, client.BaseSession, "_call_tf_sessionrun", params)
    tensors = [*feeds, *fetches]
    if tensors and not hasattr(type(tensors[0]), "_as_tf_output"):
        _fail(lib, patch, f"{type(tensors[0]).__qualname__}._as_tf_output")
    feed = {t._as_tf_output(): value for t, value in feeds.items()}
    return run(session, None, feed, [t._as_tf_output() for t in fetches], [], None)
