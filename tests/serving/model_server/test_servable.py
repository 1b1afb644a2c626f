"""A loaded SavedModel's entries in TensorFlow's global gradient registry are its own:
with a model config file each model is polled, and loaded, in its own thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dae import compat
from dae.serving.model_server import servable
from dae.serving.model_server.servable import SavedModelBundle, forget_gradients


def _custom_gradient_model(path: Path) -> Path:
    """A SavedModel whose function has a custom gradient, which tf.saved_model.load
    registers in the global registry under a fresh name."""
    import tensorflow as tf

    class Square(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def serve(self, x):
            @tf.custom_gradient
            def square(x):
                return x * x, lambda dy: 2 * x * dy

            return {"y": square(x)}

    module = Square()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("custom-gradient")
    return [_custom_gradient_model(root / name) for name in ("a", "b")]


def test_a_model_owns_the_gradients_its_load_registered(models):
    bundle = SavedModelBundle("a", 1, models[0], warmup=0)
    assert bundle.gradients and bundle.gradients <= set(compat.tf_gradient_registry())
    forget_gradients(bundle.gradients)
    assert not bundle.gradients & set(compat.tf_gradient_registry())


def test_two_models_loading_at_once_each_own_only_their_gradients(models, monkeypatch):
    """Both loads have registered their gradients before either finishes: a load that took
    "what is new in the registry since I started" would claim (and, unloaded, delete) the
    other model's entries too."""
    alone = SavedModelBundle("a", 1, models[0], warmup=0)
    forget_gradients(alone.gradients)
    both_loaded = threading.Barrier(2, timeout=120)  # a guard against a hang, never reached
    load = SavedModelBundle._load

    def load_then_meet(self, *args):
        load(self, *args)
        both_loaded.wait()

    monkeypatch.setattr(servable.SavedModelBundle, "_load", load_then_meet)
    bundles, errors = {}, []

    def open_model(name, path):
        try:
            bundles[name] = SavedModelBundle(name, 1, path, warmup=0)
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    threads = [
        threading.Thread(target=open_model, args=(n, p)) for n, p in zip("ab", models, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    a, b = bundles["a"], bundles["b"]
    assert len(a.gradients) == len(b.gradients) == len(alone.gradients)
    assert not a.gradients & b.gradients
    forget_gradients(a.gradients)  # "a" unloaded: "b", still served, keeps its entries
    registry = set(compat.tf_gradient_registry())
    assert b.gradients <= registry and not a.gradients & registry
    forget_gradients(b.gradients)


def test_a_failed_load_leaves_no_gradients_behind(models, monkeypatch):
    before = set(compat.tf_gradient_registry())
    load = SavedModelBundle._load

    def load_then_fail(self, *args):
        load(self, *args)
        raise RuntimeError("warmup failed")

    monkeypatch.setattr(servable.SavedModelBundle, "_load", load_then_fail)
    with pytest.raises(RuntimeError, match="warmup failed"):
        SavedModelBundle("a", 1, models[0], warmup=0)
    assert set(compat.tf_gradient_registry()) == before
