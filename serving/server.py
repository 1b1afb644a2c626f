"""`dae serve`: the embedded model server. One process, one event loop: gRPC (grpc.aio) and
REST (uvicorn) front ends over one Predictor and so one batching queue.

Production serves the same base path with the official tensorflow/serving image; the flag
names are TF Serving's where it has one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from dae.serving.predict import DEFAULT_MAX_ROWS

log = logging.getLogger("dae.serving")

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-base-path", required=True, help="DIR/serving/NAME (versions inside)")
    p.add_argument("--model-name", help="default: the base path's last folder name")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500)")
    p.add_argument("--rest-api-port", type=int, default=8501, help="REST port (default 8501)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--batching-parameters-file", help="TF Serving's text format; turns batching on")
    p.add_argument(
        "--file-system-poll-wait-seconds", type=float, default=1.0,
        help="how often to look for new versions; 0 loads once",
    )  # fmt: skip
    p.add_argument(
        "--num-versions", type=int, default=1,
        help="serve the latest N versions (TF Serving's 'latest' policy; default 1)",
    )  # fmt: skip
    p.add_argument(
        "--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
        help="larger requests (or tensors, once decoded) get INVALID_ARGUMENT / 400 "
        "(default 64 MiB)",
    )  # fmt: skip
    p.add_argument(
        "--max-request-rows", type=int, default=DEFAULT_MAX_ROWS,
        help=f"more rows in one request get INVALID_ARGUMENT / 400 (default {DEFAULT_MAX_ROWS}; "
        "TF Serving has no such cap)",
    )  # fmt: skip
    p.add_argument(
        "--rest-header-timeout-seconds", type=float, default=10.0,
        help="a REST request's line and headers must arrive within this (default 10; then 408)",
    )  # fmt: skip
    p.add_argument(
        "--rest-body-timeout-seconds", type=float, default=60.0,
        help="and its body within this (default 60; then 408)",
    )  # fmt: skip
    p.add_argument(
        "--rest-max-connections", type=int, default=512,
        help="REST connections open at once; one more gets 503 (default 512)",
    )  # fmt: skip
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])


class ServeError(Exception):
    """A bad flag or an unusable base path; one line for the user."""


def build(args):
    """Everything but the event loop: manager, batcher, predictor. Raises ServeError."""
    from dae.serving.batching import Batcher, parse_batching_parameters
    from dae.serving.manager import ServableManager
    from dae.serving.predict import Limits, Predictor

    base = Path(args.model_base_path).expanduser()
    if not base.is_dir():
        raise ServeError(f"model base path {base} does not exist")
    name = args.model_name or base.name
    batcher = None
    if args.batching_parameters_file:
        try:
            text = Path(args.batching_parameters_file).read_text()
        except OSError as e:
            raise ServeError(f"cannot read batching parameters file: {e.strerror}") from None
        try:
            batcher = Batcher(parse_batching_parameters(text))
        except ValueError as e:
            raise ServeError(str(e)) from None
    for flag in ("num_versions", "max_request_rows", "max_request_bytes", "rest_max_connections"):
        if getattr(args, flag) < 1:
            raise ServeError(f"--{flag.replace('_', '-')} must be at least 1")
    for flag in ("rest_header_timeout_seconds", "rest_body_timeout_seconds"):
        if not getattr(args, flag) > 0:
            raise ServeError(f"--{flag.replace('_', '-')} must be positive")
    if batcher is not None:
        # The batch threads are the parallelism: with an op thread pool as wide as the
        # machine, concurrent model calls (and the event loop) fight for the same cores;
        # on 2 cores a small batch then costs twice the CPU.
        import tensorflow as tf

        threads = max(1, (os.cpu_count() or 1) // batcher.params.num_batch_threads)
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:  # TF already ran in this process (an embedding caller): keep it
            logging.getLogger("dae.serving").debug("TF threads already set; left as they are")
    manager = ServableManager(name, base, args.num_versions)
    return Predictor(manager, batcher, Limits(args.max_request_rows, args.max_request_bytes))


async def serve(args, predictor, ready=None) -> None:
    import uvicorn

    from dae.serving.grpc_service import make_server
    from dae.serving.http_protocol import protocol
    from dae.serving.memory import Janitor
    from dae.serving.rest import make_app

    manager = predictor.manager
    predictor.janitor = Janitor()
    manager.after_swap = predictor.janitor.due
    await asyncio.get_running_loop().run_in_executor(
        None, manager.start, args.file_system_poll_wait_seconds
    )
    try:
        grpc_server, grpc_port = make_server(
            predictor, f"{args.host}:{args.port}", args.max_request_bytes
        )
    except OSError as e:
        manager.stop()
        raise ServeError(f"{e} (in use, not allowed, or not an address of this machine)") from None
    await grpc_server.start()
    config = uvicorn.Config(
        make_app(predictor, args.max_request_bytes, args.rest_body_timeout_seconds),
        host=args.host, port=args.rest_api_port, log_level="warning", access_log=False,
        lifespan="off", ws="none",
        # httptools (not "auto": its silent h11 fallback adds ~0.4 ms a batch-64 call),
        # with JSON errors, pipelining in order, a header timeout and a connection cap.
        http=protocol(args.rest_header_timeout_seconds, args.rest_max_connections),
    )  # fmt: skip
    rest = uvicorn.Server(config)
    # SIGINT/SIGTERM stop both front ends: ours below, through asyncio. uvicorn's serve() also
    # takes them for its run (Server.capture_signals, signal.signal) and stops REST itself;
    # the signal still reaches asyncio's handlers (the wakeup fd is written for any handler).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    rest_task = asyncio.create_task(rest.serve())
    while not rest.started:
        if rest_task.done():
            await grpc_server.stop(None)
            raise ServeError(f"cannot bind REST to {args.host}:{args.rest_api_port}")
        await asyncio.sleep(0.02)
    served = sorted(v for v, s in manager.states.items() if s.state == "AVAILABLE")
    log.info(
        "serving model '%s' versions %s from %s: gRPC %s:%d, REST %s:%d, batching %s",
        manager.name, served, manager.base, args.host, grpc_port, args.host,
        args.rest_api_port, "on" if predictor.batcher else "off",
    )  # fmt: skip
    if ready is not None:
        ready(grpc_port)
    await stop.wait()
    log.info("shutting down")
    rest.should_exit = True
    await grpc_server.stop(grace=5)
    await rest_task
    manager.stop()
    predictor.janitor.stop()
    log.info("requests: %s", dict(predictor.counts) or "none")
    if predictor.batcher:
        b = predictor.batcher
        log.info("batching: %d rows in %d model calls", b.rows_run, b.batches_run)
        b.close()


def main(args) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    predictor = build(args)
    asyncio.run(serve(args, predictor))
    return 0
