"""TF Serving's configuration files and command line, as `dae serve` reads them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dae.serving.format.export import version_dirs, versions
from dae.serving.model_server import flags, server
from dae.serving.model_server.model_config import (
    ServerConfigError,
    VersionPolicy,
    parse_model_server_config,
    prometheus_path,
)

GOOD = """
model_config_list {
  config { name: "a" base_path: "/models/a" model_platform: "tensorflow" }
  config {
    name: "b" base_path: "/models/b" model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 3 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 3 }
  }
  config {
    name: "c" base_path: "/models/c" model_platform: "tensorflow"
    model_version_policy { all {} }
  }
  config {
    name: "d" base_path: "/models/d" model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 2 } }
  }
}
"""


def test_a_model_server_config_in_text_format():
    a, b, c, d = parse_model_server_config(GOOD)
    assert (a.name, a.base_path, a.policy) == ("a", Path("/models/a"), VersionPolicy("latest", 1))
    assert b.policy.aspired([1, 2, 3, 4]) == [1, 3] and b.labels == {"stable": 1, "canary": 3}
    assert c.policy.aspired([1, 2, 3]) == [1, 2, 3]
    assert d.policy.aspired([1, 2, 3]) == [2, 3] and d.policy.aspired([]) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("improperly formatted file", "Error parsing text-format tensorflow.serving.ModelServer"),
        (
            'model_config_list { config { name: "a" base_path: "/m" model_platform: "tensorflow" }'
            ' config { name: "a" base_path: "/n" model_platform: "tensorflow" } }',
            "Illegal to list model a multiple times",
        ),
        (
            'model_config_list { config { name: "a" base_path: "m" '
            'model_platform: "tensorflow" } }',
            "Expected model a to have an absolute path",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/m" } }',
            "Illegal setting neither ModelServerConfig::model_type",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/m" model_platform: "tflite" } }',
            "platform 'tflite' is not served",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/m" model_platform: "tensorflow"'
            " model_version_policy { specific {} } } }",
            "lists no versions",
        ),
    ],
)
def test_configs_tf_serving_refuses_are_refused(text, message):
    with pytest.raises(ServerConfigError, match=message):
        parse_model_server_config(text)


def test_monitoring_config(tmp_path):
    f = tmp_path / "monitoring.txt"
    f.write_text('prometheus_config { enable: true, path: "/metrics" }')
    assert prometheus_path(f) == "/metrics"
    f.write_text("prometheus_config { enable: false }")
    assert prometheus_path(f) is None
    f.write_text("prometheus_config { enable: true }")
    assert prometheus_path(f) == "/monitoring/prometheus/metrics"
    f.write_text("prometheus { }")
    with pytest.raises(ServerConfigError, match="tensorflow.serving.MonitoringConfig"):
        prometheus_path(f)


def test_version_folders_spelled_as_tf_servings(tmp_path):
    for name in ("00000123", "7", "0007", "00000124", "tmp", ".tmp-1", "99999999999999999999"):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file is not a version")
    assert versions(tmp_path) == [7, 123, 124]
    assert version_dirs(tmp_path)[123] == tmp_path / "00000123"
    assert version_dirs(tmp_path)[7] == tmp_path / "7"  # the shorter spelling serves


def _args(*argv):
    parser = argparse.ArgumentParser()
    flags.add_arguments(parser)
    return parser.parse_args(argv)


def test_both_spellings_of_tf_servings_flags():
    a = _args(
        "--model_base_path=/m",
        "--rest_api_port=0",
        "--enable_batching",
        "--enable_model_warmup=false",
        "--tensorflow_intra_op_parallelism=1",
    )
    b = _args(
        "--model-base-path",
        "/m",
        "--rest-api-port",
        "0",
        "--enable-batching=true",
        "--enable-model-warmup",
        "false",
        "--tensorflow-intra-op-parallelism",
        "1",
    )
    for args in (a, b):
        assert (args.model_base_path, args.rest_api_port, args.enable_batching) == ("/m", 0, True)
        assert not args.enable_model_warmup and args.tensorflow_intra_op_parallelism == 1
    with pytest.raises(SystemExit):
        _args("--enable_batching=maybe")


def test_the_official_images_environment(tmp_path):
    (tmp_path / "m").mkdir()
    (config,) = server.model_configs(_args(), {"MODEL_NAME": "m", "MODEL_BASE_PATH": str(tmp_path)})
    assert (config.name, config.base_path) == ("m", tmp_path / "m")
    (config,) = server.model_configs(_args(f"--model_base_path={tmp_path / 'm'}"), {})
    assert config.name == "m"  # no --model_name: the folder's name (TF Serving: "default")
    with pytest.raises(flags.ServeError, match="Both --model_base_path and --model_config_file"):
        server.model_configs(_args(), {})
    with pytest.raises(flags.ServeError, match="does not exist"):
        server.model_configs(_args(), {"MODEL_NAME": "nope", "MODEL_BASE_PATH": str(tmp_path)})


def test_flags_that_cannot_work_say_so():
    for argv, message in [
        (("--model_base_path=/m", "--port=0"), "At least one of --port or --grpc_socket_path"),
        (("--model_base_path=/m", "--use_alts_credentials=true"), "not supported"),
        (("--model_base_path=/m", "--rest_api_timeout_in_ms=0"), "must be positive"),
        (("--model_base_path=/m", "--num_request_iterations_for_warmup=0"), "at least 1"),
    ]:
        with pytest.raises(flags.ServeError, match=message):
            flags.check_flags(_args(*argv))
    assert server._channel_arguments("grpc.max_connection_age_ms=2000,grpc.lb_policy_name=x") == [
        ("grpc.max_connection_age_ms", 2000),
        ("grpc.lb_policy_name", "x"),
    ]
    with pytest.raises(flags.ServeError, match="not key=value"):
        server._channel_arguments("nonsense")
