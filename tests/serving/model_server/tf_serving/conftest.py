"""TF Serving's own model server integration tests, ported to pytest and run against
`dae serve`: tensorflow_serving/model_servers/tensorflow_model_server_test.py and its base,
test_util/tensorflow_model_server_test_base.py (github.com/tensorflow/serving).

Each server is started as the base's RunServer starts tensorflow_model_server, with TF
Serving's flag spellings:

    dae serve --port=P --rest_api_port=R --rest_api_timeout_in_ms=5000
              --grpc_socket_path=S (--model_config_file=F | --model_name=N --model_base_path=B)
              [--monitoring_config_file=M] [--model_config_file_poll_wait_seconds=N]
              --grpc_channel_arguments=...,grpc.so_reuseaddr=1

and, as RunServer caches its servers by their arguments, one server serves every test with
the same command line. The servers the selected tests of this folder need are all started
when the first one is asked for (they start in parallel), and stopped after the folder's
last test.

The folder: this conftest (the fixtures), tfs_models.py (the models and config files),
tfs_servers.py (RunServer), tfs_calls.py (the base's helpers: calls, request builders,
checks); test_model_server.py (the cases of TF Serving's file, each naming the case it
ports: testGetModelStatus -> test_get_model_status), test_config_and_versions.py (config
files and reloads, and beyond TF Serving's file: version folders, version policies and
labels, the Docker image's environment). TF Serving's text test data (config files, the
expected metadata) are copied verbatim in tests/serving/model_server/tf_serving_data/.

Differences from TF Serving's harness: servers answer on 127.0.0.1 (dae binds it by default;
TF Serving's tests use localhost), each server gets its own gRPC Unix socket (TF Serving's
servers all take /tmp/tf-serving.sock, so only the last one started answers there),
readiness is polled on REST (TF Serving sends gRPC Predicts for a missing model until the
error names a 'Servable': test_wait_for_server_ready_probe checks dae's error does), and a
config reload is waited for by polling instead of a fixed 10 s sleep.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tfs_models import Models
from tfs_servers import ModelServer, ModelServers

HERE = Path(__file__).parent
POOL = pytest.StashKey[ModelServers]()


def _here(item: pytest.Item) -> bool:
    return item.path.is_relative_to(HERE)


@pytest.fixture(scope="session")
def servers(request, tmp_path_factory):
    """Every server the selected tests of this folder use, started now and in parallel
    (each takes seconds of TensorFlow import and model loading), stopped after the folder's
    last test (pytest_runtest_teardown; the folder has no __init__.py, so pytest's package
    scope would be the session's) or at the end of the session."""
    root = tmp_path_factory.mktemp("tf-serving")
    pool = ModelServers(Models(root / "models"), root)
    wanted = {
        name.removesuffix("_server")
        for item in request.session.items
        if _here(item)
        for name in getattr(item, "fixturenames", ())
        if name.endswith("_server") and name.removesuffix("_server") in pool.specs
    }
    if "distrat_keras_sequential" in wanted:
        pool.models.start_distrat()  # its own process: started first, waited for last
    request.session.stash[POOL] = pool
    try:
        pool.prestart(sorted(wanted, key=lambda k: k == "distrat_keras_sequential"))
        yield pool
    finally:
        pool.stop()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the last test of this folder, the servers stop (not at the session's end)."""
    pool = item.session.stash.get(POOL, None)
    if pool is None or (nextitem is not None and _here(nextitem)):
        return
    items = item.session.items
    if not any(_here(later) for later in items[items.index(item) + 1 :]):
        pool.stop()


def _server_fixture(key: str):
    @pytest.fixture(scope="session", name=f"{key}_server")
    def server(servers) -> ModelServer:
        return servers.run(key)

    return server


_half_plus_two_server = _server_fixture("half_plus_two")
_half_plus_two_tf2_server = _server_fixture("half_plus_two_tf2")
_good_model_config_server = _server_fixture("good_model_config")
_bad_model_config_server = _server_fixture("bad_model_config")
_model_config_reload_server = _server_fixture("model_config_reload")
_model_config_reload_zero_poll_server = _server_fixture("model_config_reload_zero_poll")
_grpc_channel_args_server = _server_fixture("grpc_channel_args")
_monitoring_server = _server_fixture("monitoring")
_tf_saved_model_save_server = _server_fixture("tf_saved_model_save")
_tf_saved_model_save_multiple_signatures_server = _server_fixture(
    "tf_saved_model_save_multiple_signatures"
)
_keras_sequential_server = _server_fixture("keras_sequential")
_distrat_keras_sequential_server = _server_fixture("distrat_keras_sequential")
_version_policies_server = _server_fixture("version_policies")
_docker_env_server = _server_fixture("docker_env")
