"""`dae explore`: a web page to play with a served model. Draw, upload or pick a test
image, corrupt it and see it denoised (two versions side by side); walk a VAE's latent
space. It talks to any TF Serving REST endpoint through its own small server, and needs no
network: its scripts and styles ship in `static/`.
"""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path

log = logging.getLogger("dae.serving.explorer")


class ExploreError(Exception):
    """A bad flag, unusable test images or a port we cannot bind; one line for the user."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True, help="the model server's REST HOST:PORT (or URL)")
    p.add_argument("--model-name", default="denoiser", help="the served model (default denoiser)")
    p.add_argument("--port", type=int, default=8080, help="the page's port (default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--examples",
        default="auto",
        help="test images: an examples artifact folder (ingest or transform output), "
        "tfds:NAME/SPLIT, or none; default: MNIST's test split if TFDS has it prepared",
    )
    p.add_argument(
        "--num-examples",
        type=int,
        default=500,
        help="test images to load, and to encode for the latent scatter (default 500)",
    )
    p.add_argument("--data-dir", default="~/tensorflow_datasets", help="TFDS's data dir")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])


def build(args):
    """The Starlette app, test images loaded. Raises ExploreError."""
    from dae.serving.explorer import examples
    from dae.serving.explorer.app import Explorer, make_app
    from dae.serving.explorer.upstream import Upstream

    address = args.server.strip().split("://", 1)[-1].rstrip("/")
    host, _, port = address.rpartition(":")
    if not host or " " in host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ExploreError(
            f"--server must be the model server's REST HOST:PORT, not '{args.server}'"
        )
    if not 1 <= args.num_examples <= 10000:
        raise ExploreError("--num-examples must be between 1 and 10000")
    try:
        found, note = examples.load(args.examples, args.num_examples, Path(args.data_dir))
    except examples.ExamplesError as e:
        raise ExploreError(str(e)) from None
    log.info("%s", note)
    return make_app(Explorer(Upstream(args.server, args.model_name), found, note))


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (port 0: any free port), or ExploreError."""
    if not 0 <= port <= 65535:
        raise ExploreError(f"--port must be 0..65535, got {port}")
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as e:
        raise ExploreError(f"cannot bind {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def server(app, log_level: str = "warning"):
    """A uvicorn server for `app`; run it with `.run(sockets=[sock])`."""
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        http="httptools",
        log_config=None,  # the caller's logging (main's basicConfig), not uvicorn's handlers
    )
    return uvicorn.Server(config)


def main(args) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for chatty in ("absl", "httpx"):  # TFDS's "Load dataset info", a line per request
        logging.getLogger(chatty).setLevel(logging.WARNING)
    sock = bind(args.host, args.port)
    app = build(args)
    host, port = sock.getsockname()[:2]
    log.info(
        "explorer at http://%s:%d/ for model '%s' at %s",
        f"[{host}]" if ":" in host else host,
        port,
        args.model_name,
        args.server,
    )
    server(app, "warning").run(sockets=[sock])
    return 0
