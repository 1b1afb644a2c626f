"""The models of TF Serving's model server tests, generated on first use in a temp dir as TF
Serving's saved_model_half_plus_two.py generates its test data: tf_serving_models.py (one
folder up) for half_plus_two / half_plus_three, the generators below for the
tf.saved_model.save and Keras cases; and the config files the servers are started with. TF
Serving's text test data (config files, the expected metadata) are copied verbatim in
tests/serving/model_server/tf_serving_data/."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cached_property
from pathlib import Path

import tensorflow as tf
from tf_serving_models import half_plus_three_tf1, half_plus_two_tf1, half_plus_two_tf2

DATA = Path(__file__).parent.parent / "tf_serving_data"
DEFAULT_SIGNATURE = "serving_default"


def tf_saved_model_save(base: Path) -> Path:
    """test_tf_saved_model_save's model: y = v1 * v2 * x with v1 = 3, v2 = 2, saved from a
    concrete function. TF Serving calls tf.saved_model.experimental.save, which TF 2.21 no
    longer has: tf.saved_model.save takes the same arguments."""
    root = tf.train.Checkpoint()
    root.v1, root.v2 = tf.Variable(3.0), tf.Variable(2.0)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    to_save = root.f.get_concrete_function(tf.TensorSpec(None, tf.float32))
    tf.saved_model.save(root, str(base / "00000123"), to_save)
    return base


def tf_saved_model_save_multiple_signatures(base: Path) -> Path:
    """test_tf_saved_model_save_multiple_signatures's model: serving_default answers y = 1,
    custom_signature_key y = 2."""
    root = tf.train.Checkpoint()
    spec = [tf.TensorSpec(None, tf.float32)]
    root.f = tf.function(lambda x: {"y": 1.0}, input_signature=spec)
    root.g = tf.function(lambda x: {"y": 2.0}, input_signature=spec)
    signatures = {DEFAULT_SIGNATURE: root.f, "custom_signature_key": root.g}
    tf.saved_model.save(root, str(base / "00000123"), signatures=signatures)
    return base


def keras_sequential_saved_model_save(base: Path) -> Path:
    """test_sequential_keras_saved_model_save's model: Input x (1 float) -> Lambda identity
    named y, written as TF Serving writes it, tf.saved_model.save(model, path). With Keras 3
    that still works, but the signature is Keras 3's default save signature: input 'inputs',
    output 'output_0' (Keras 2 named them after the Input and the last layer: x, y)."""
    import keras

    model = keras.Sequential()
    model.add(keras.layers.Input(dtype="float32", shape=(1,), name="x"))
    model.add(keras.layers.Lambda(lambda x: x, name="y"))
    tf.saved_model.save(model, str(base / "00000123"))
    return base


DISTRAT_SCRIPT = """
import sys
import tensorflow as tf

# SetVirtualCpus(2): before TensorFlow initialises its devices, so in a fresh process.
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras

strategy = tf.distribute.MirroredStrategy(devices=("/cpu:0", "/cpu:1"))
assert strategy.num_replicas_in_sync == 2
with strategy.scope():
    model = keras.Sequential()
    model.add(keras.layers.Input(dtype="float32", shape=(1,), name="x"))
    model.add(keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros"))
    model.add(keras.layers.Lambda(lambda x: x, name="y"))
model.export(sys.argv[1])
"""


def start_distrat_keras(base: Path) -> subprocess.Popen:
    """test_distrat_sequential_keras_saved_model_save's model: Dense(1) with weights one,
    built in a MirroredStrategy over 2 virtual CPUs (a process of its own: virtual devices
    must be configured before TensorFlow runs anything), written with Keras 3's
    model.export: signatures serve and serving_default, input 'x' (the Input's name), output
    'output_0'."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-c", DISTRAT_SCRIPT, str(base / "00000123")]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


class Models:
    """The models of the servers, generated on first use under `root`. The paths are TF
    Serving's testdata names: base paths, one version folder each unless said."""

    def __init__(self, root: Path):
        self.root = root
        self._distrat = None

    def _dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True)
        return path

    @cached_property
    def half_plus_two(self) -> Path:  # _GetSavedModelBundlePath
        base = self._dir("saved_model_half_plus_two_cpu")
        half_plus_two_tf1(base)  # 00000123
        return base

    @cached_property
    def half_plus_three(self) -> Path:  # _GetSavedModelHalfPlusThreePath
        base = self._dir("saved_model_half_plus_three")
        half_plus_three_tf1(base)
        return base

    @cached_property
    def half_plus_two_tf2(self) -> Path:  # _GetSavedModelHalfPlusTwoTf2
        base = self._dir("saved_model_half_plus_two_tf2_cpu")
        half_plus_two_tf2(base)
        return base

    @cached_property
    def two_versions(self) -> Path:
        """saved_model_half_plus_two_2_versions: 00000123 answers 3.0 for x = 2, 00000124
        (b = 3) 4.0, so an answer tells the version."""
        base = self._dir("saved_model_half_plus_two_2_versions")
        half_plus_two_tf1(base, version="00000123")
        half_plus_two_tf1(base, b=3.0, c=4.0, version="00000124")
        return base

    @cached_property
    def three_versions(self) -> Path:
        """Versions 00000001..00000003, version v answering 2 + v for x = 2 (b = v + 1)."""
        base = self._dir("half_plus_v")
        for v in (1, 2, 3):
            half_plus_two_tf1(base, b=v + 1.0, c=v + 2.0, version=f"{v:08d}")
        return base

    @cached_property
    def docker_models(self) -> Path:
        """MODEL_BASE_PATH of the Docker image case: the model m in MODEL_BASE_PATH/m."""
        root = self._dir("models")
        half_plus_two_tf1(root / "m", version="00000007")
        return root

    @cached_property
    def tf_saved_model_save(self) -> Path:
        return tf_saved_model_save(self._dir("tf_saved_model_save"))

    @cached_property
    def tf_saved_model_save_multiple_signatures(self) -> Path:
        return tf_saved_model_save_multiple_signatures(
            self._dir("tf_saved_model_save_multiple_signatures")
        )

    @cached_property
    def keras_sequential(self) -> Path:
        return keras_sequential_saved_model_save(self._dir("keras_sequential_saved_model_save"))

    def start_distrat(self) -> None:
        if self._distrat is None:
            self._distrat_base = self._dir("distrat_keras_sequential_saved_model_save")
            self._distrat = start_distrat_keras(self._distrat_base)

    @cached_property
    def distrat_keras_sequential(self) -> Path:
        self.start_distrat()
        out, _ = self._distrat.communicate(timeout=300)
        assert self._distrat.returncode == 0, out.decode(errors="replace")[-3000:]
        return self._distrat_base

    # -- config files, written where TF Serving's tests write theirs ----------------------

    def config_file(self, name: str, text: str) -> Path:
        path = self._dir(f"config-{name}") / "model_config.txt"
        path.write_text(text)
        return path

    @cached_property
    def good_model_config(self) -> Path:
        """__BuildModelConfigFile: good_model_config.txt with its placeholders replaced."""
        text = (DATA / "good_model_config.txt").read_text()
        text = text.replace("${TEST_HALF_PLUS_TWO_DIR}", str(self.half_plus_two))
        text = text.replace("${TEST_HALF_PLUS_THREE_DIR}", str(self.half_plus_three))
        return self.config_file("good", text)


def model_config(name: str, base_path: Path, extra: str = "") -> str:
    """testModelConfigReload's base_config_proto, one model."""
    return (
        "model_config_list: {\n  config: {\n"
        f'    name: "{name}",\n    base_path: "{base_path}",\n'
        f'    model_platform: "tensorflow"\n{extra}  }}\n}}\n'
    )


VERSIONS_CONFIG = """
model_config_list {{
  config {{
    name: "latest2"  base_path: "{base}"  model_platform: "tensorflow"
    model_version_policy {{ latest {{ num_versions: 2 }} }}
  }}
  config {{
    name: "all"  base_path: "{base}"  model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
  }}
  config {{
    name: "specific"  base_path: "{base}"  model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 2 }} }}
  }}
  config {{
    name: "labeled"  base_path: "{base}"  model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1  versions: 2 }} }}
    version_labels {{ key: "stable"  value: 1 }}
    version_labels {{ key: "canary"  value: 2 }}
  }}
  config {{ name: "two_versions"  base_path: "{two_versions}"  model_platform: "tensorflow" }}
}}
"""
