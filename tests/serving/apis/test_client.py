"""dae's own clients against a real `dae serve`."""

import contextlib
import http.server
import socket
import threading
import types

import numpy as np
import pytest

from dae.serving.apis.client import RestClient, ServingClientError
from dae.serving.format.export import load_servable

IMAGES = np.random.default_rng(1).random((4, 28, 28, 1)).astype(np.float32)


def test_rest_client_predicts_and_survives_a_dropped_keep_alive(server, model_dir):
    client = RestClient(server.rest, "denoiser")
    expected = load_servable(model_dir)(IMAGES)
    np.testing.assert_allclose(client.predict(IMAGES), expected, atol=1e-6)
    # The server drops an idle keep-alive connection (uvicorn after 5 s): the next call
    # finds a dead socket and must go again on a new connection, not fail.
    client._conn.sock.shutdown(socket.SHUT_RDWR)
    np.testing.assert_allclose(client.predict(IMAGES, version=1), expected, atol=1e-6)
    with pytest.raises(ServingClientError, match="shape"):
        client.predict(IMAGES[:, :20])
    client.close()


def test_rest_client_names_a_server_that_is_not_there():
    from support import free_port

    client = RestClient(f"127.0.0.1:{free_port()}", "denoiser", timeout=5)
    with pytest.raises(OSError):
        client.predict(IMAGES)


@contextlib.contextmanager
def fake_server(status: int, body: bytes):
    """An HTTP server that answers every POST with `status` and `body`; yields its
    `address` and the `paths` it was asked for."""
    paths = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            paths.append(self.path)
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield types.SimpleNamespace(address=f"127.0.0.1:{httpd.server_address[1]}", paths=paths)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_rest_client_reports_a_non_json_error_page():
    """A proxy in front of the server can answer with its own page: the caller still gets a
    ServingClientError with the status and the page's text, not a JSON decoding error."""
    with fake_server(502, b"<html>502 Bad Gateway</html>") as proxy:
        client = RestClient(proxy.address, "denoiser", timeout=5)
        try:
            with pytest.raises(ServingClientError, match="502: <html>502 Bad Gateway") as e:
                client.predict(IMAGES)
            assert e.value.code == "502"
        finally:
            client.close()


@pytest.mark.parametrize(
    "version, path",
    [
        (None, "/v1/models/denoiser:predict"),
        (0, "/v1/models/denoiser/versions/0:predict"),
        (3, "/v1/models/denoiser/versions/3:predict"),
    ],
)
def test_rest_client_addresses_the_version_asked_for_zero_included(version, path):
    """Version 0 is a version (a pusher may number from 0), not "the latest"."""
    with fake_server(200, b'{"outputs": [[0.5]]}') as server:
        client = RestClient(server.address, "denoiser", timeout=5)
        try:
            np.testing.assert_array_equal(client.predict(IMAGES[:1], version=version), [[0.5]])
        finally:
            client.close()
    assert server.paths == [path]


def test_rest_client_reads_non_finite_outputs_as_tf_serving_writes_them():
    """TF Serving writes NaN, Infinity and -Infinity as bare tokens (not null)."""
    with fake_server(200, b'{"outputs": [[NaN, Infinity, -Infinity, 0.5]]}') as server:
        client = RestClient(server.address, "denoiser", timeout=5)
        try:
            out = client.predict(IMAGES[:1])
        finally:
            client.close()
    np.testing.assert_array_equal(out, [[np.nan, np.inf, -np.inf, 0.5]])
