"""tensorflow_model_server_test.py's config file cases (a good and a bad config file, reloads),
one test a case (its name in the docstring); and, beyond TF Serving's file, what its test
models and the official image rely on: version folders with leading zeros, version policies
and labels, the Docker image's environment. The harness: conftest.py."""

from __future__ import annotations

import time

import grpc
import pytest
from tfs_calls import call_rest, fail, model_versions, verify_predict_request, wait_until
from tfs_models import model_config

# Fourteen `dae serve`s, each loading TensorFlow: the whole suite, not the inner loop.
pytestmark = pytest.mark.slow

# ---- tensorflow_model_server_test.py -----------------------------------------------------


def test_good_model_config(good_model_config_server):
    """testGoodModelConfig: two models from good_model_config.txt."""
    address = good_model_config_server.grpc
    verify_predict_request(address, 3.0, 123, model_name="half_plus_two")
    verify_predict_request(address, 3.0, 123, model_name="half_plus_two", specify_output=False)
    verify_predict_request(address, 4.0, 123, model_name="half_plus_three")
    verify_predict_request(address, 4.0, 123, model_name="half_plus_three", specify_output=False)


def test_bad_model_config(bad_model_config_server):
    """testBadModelConfig: an unparsable config file is refused, with protobuf's error."""
    returncode = bad_model_config_server.wait_exit()
    output = bad_model_config_server.output()
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in output, output
    assert returncode != 0


def test_model_config_reload(model_config_reload_server, servers):
    """testModelConfigReload: with --model_config_file_poll_wait_seconds=1, a rewritten
    config file is applied while serving (TF Serving's test sleeps 10 s; this one polls).
    Beyond TF Serving's test, what TF Serving does with the model taken out: it unloads it
    (Predict: NOT_FOUND) and its status keeps the version, state END (the
    ServableStateMonitor forgets nothing)."""
    server = model_config_reload_server
    verify_predict_request(server.grpc, 3.0, 123, model_name="half_plus_two", specify_output=False)
    config = server.args.model_config_file
    config.write_text(model_config("half_plus_three", servers.models.half_plus_three))
    wait_until(
        lambda: verify_predict_request(
            server.grpc, 4.0, 123, model_name="half_plus_three", specify_output=False
        ),
        what="half_plus_three served after the config file changed",
    )

    def half_plus_two_unloaded():
        try:
            verify_predict_request(server.grpc, 3.0, 123, model_name="half_plus_two")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e.details()
            return
        raise AssertionError("half_plus_two still serves")

    wait_until(half_plus_two_unloaded, what="half_plus_two unloaded")
    wait_until(
        lambda: (
            model_versions(server, "half_plus_two") == [("123", "END")]
            or fail(f"status: {server.http.get('/v1/models/half_plus_two').text}")
        ),
        seconds=10,
        what="half_plus_two's status: version 123 END",
    )


def test_model_config_reload_with_zero_poll_period(model_config_reload_zero_poll_server, servers):
    """testModelConfigReloadWithZeroPollPeriod: with a poll period of 0 the config file is
    read once: a rewrite changes nothing."""
    server = model_config_reload_zero_poll_server
    verify_predict_request(server.grpc, 3.0, 123, model_name="half_plus_two", specify_output=False)
    config = server.args.model_config_file
    config.write_text(model_config("half_plus_three", servers.models.half_plus_three))
    time.sleep(0 + 1)  # poll_period + 1
    verify_predict_request(server.grpc, 3.0, 123, model_name="half_plus_two", specify_output=False)


# ---- beyond TF Serving's file: version folders, policies, labels, the Docker image -------


def test_version_folder_with_leading_zeros(half_plus_two_server):
    """TF Serving's test models are version folders 00000123: version 123, over gRPC and
    REST, and asked for by number."""
    verify_predict_request(half_plus_two_server.grpc, 3.0, 123, version=123)
    r = half_plus_two_server.http.post(
        "/v1/models/default/versions/123:predict", json={"instances": [[2.0]]}
    )
    assert r.status_code == 200 and r.json() == {"predictions": [[3.0]]}, r.text
    meta = call_rest(half_plus_two_server, "/v1/models/default/versions/123/metadata")
    assert meta["model_spec"]["version"] == "123"


def test_two_version_folders_serve_the_latest(version_policies_server):
    """saved_model_half_plus_two_2_versions (00000123, 00000124; a model of the version
    policies' config, with no policy: TF Serving's default, latest 1): 124 serves, 123 is
    never loaded (and so not in the status)."""
    server = version_policies_server
    verify_predict_request(server.grpc, 4.0, 124, model_name="two_versions")
    assert call_rest(server, "/v1/models/two_versions") == {
        "model_version_status": [
            {
                "version": "124",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    with pytest.raises(grpc.RpcError) as e:
        verify_predict_request(server.grpc, 3.0, 123, model_name="two_versions", version=123)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Servable not found for request: Specific(two_versions, 123)" in e.value.details()


def test_model_version_policy_latest(version_policies_server):
    """model_version_policy { latest { num_versions: 2 } }: versions 3 and 2 serve, 3 by
    default; version 1 is not aspired, so not loaded and not in the status."""
    server = version_policies_server
    assert model_versions(server, "latest2") == [("3", "AVAILABLE"), ("2", "AVAILABLE")]
    verify_predict_request(server.grpc, 5.0, 3, model_name="latest2")
    verify_predict_request(server.grpc, 4.0, 2, model_name="latest2", version=2)
    with pytest.raises(grpc.RpcError) as e:
        verify_predict_request(server.grpc, 3.0, 1, model_name="latest2", version=1)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_model_version_policy_all(version_policies_server):
    """model_version_policy { all {} }: every version serves, the latest by default."""
    server = version_policies_server
    every = [("3", "AVAILABLE"), ("2", "AVAILABLE"), ("1", "AVAILABLE")]
    assert model_versions(server, "all") == every
    verify_predict_request(server.grpc, 5.0, 3, model_name="all")
    for v in (1, 2, 3):
        verify_predict_request(server.grpc, 2.0 + v, v, model_name="all", version=v)


def test_model_version_policy_specific(version_policies_server):
    """model_version_policy { specific { versions: 2 } }: only version 2, also when no
    version is asked for."""
    server = version_policies_server
    assert model_versions(server, "specific") == [("2", "AVAILABLE")]
    verify_predict_request(server.grpc, 4.0, 2, model_name="specific")
    r = server.http.post("/v1/models/specific/versions/3:predict", json={"instances": [[2.0]]})
    assert r.status_code == 404, r.text


def test_version_labels_rest(version_policies_server):
    """version_labels: REST /v1/models/NAME/labels/LABEL (predict, metadata, status), and
    TF Serving's 400 for a label it does not know."""
    server = version_policies_server
    for label, y in (("stable", 3.0), ("canary", 4.0)):
        r = server.http.post(
            f"/v1/models/labeled/labels/{label}:predict", json={"instances": [[2.0]]}
        )
        assert r.status_code == 200 and r.json() == {"predictions": [[y]]}, r.text
    meta = call_rest(server, "/v1/models/labeled/labels/stable/metadata")
    assert meta["model_spec"] == {"name": "labeled", "signature_name": "", "version": "1"}
    # GetModelStatus looks at a version number only: a label's status is the model's.
    assert model_versions(server, "labeled/labels/canary") == model_versions(server, "labeled")
    assert model_versions(server, "labeled") == [("2", "AVAILABLE"), ("1", "AVAILABLE")]
    r = server.http.post("/v1/models/labeled/labels/nosuch:predict", json={"instances": [[2.0]]})
    assert r.status_code == 400, r.text
    assert r.json() == {"error": "Unrecognized servable version label: nosuch"}


def test_version_labels_grpc(version_policies_server):
    """version_labels: gRPC model_spec.version_label; the answer names the version."""
    server = version_policies_server
    verify_predict_request(server.grpc, 3.0, 1, model_name="labeled", version_label="stable")
    verify_predict_request(server.grpc, 4.0, 2, model_name="labeled", version_label="canary")
    verify_predict_request(server.grpc, 4.0, 2, model_name="labeled")  # latest of 1, 2
    with pytest.raises(grpc.RpcError) as e:
        verify_predict_request(server.grpc, 3.0, 1, model_name="labeled", version_label="nosuch")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "Unrecognized servable version label: nosuch"


def test_docker_image_environment(docker_env_server):
    """The official image's entrypoint: tensorflow_model_server --port=8500
    --rest_api_port=8501 --model_name=${MODEL_NAME}
    --model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME}: with MODEL_NAME=m and
    MODEL_BASE_PATH=/x and no model flags, dae serve serves /x/m as m."""
    server = docker_env_server
    verify_predict_request(server.grpc, 3.0, 7, model_name="m")
    assert model_versions(server, "m") == [("7", "AVAILABLE")]
    r = server.http.post("/v1/models/m:predict", json={"instances": [[2.0]]})
    assert r.status_code == 200 and r.json() == {"predictions": [[3.0]]}, r.text
