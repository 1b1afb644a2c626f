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

from dae.serving.model_server.predict import DEFAULT_MAX_ROWS

log = logging.getLogger("dae.serving")

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024


def _bool(text: str) -> bool:
    """TF Serving's (absl's) boolean flag values."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "t", "y"):
        return True
    if value in ("false", "0", "no", "f", "n"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r} (true or false)")


def _flag(p, name: str, *, help: str, **kwargs) -> None:
    """A flag under TF Serving's spelling (--model_base_path) and dae's (--model-base-path)."""
    if kwargs.get("type") is _bool:
        kwargs.setdefault("nargs", "?")
        kwargs.setdefault("const", True)
    spellings = dict.fromkeys((f"--{name}", f"--{name.replace('_', '-')}"))  # --port: one
    p.add_argument(*spellings, dest=name, help=help, **kwargs)


# TF Serving flags that change nothing in one process on a CPU (accepted, so a command line
# written for tensorflow_model_server runs unchanged; each is logged once).
NO_EFFECT = (
    "rest_api_num_threads",
    "grpc_max_threads",
    "num_load_threads",
    "num_unload_threads",
    "max_num_load_retries",
    "load_retry_interval_micros",
    "flush_filesystem_caches",
    "enable_profiler",
    "skip_initialize_tpu",
    "enable_grpc_healthcheck_service",
    "rest_api_enable_cors_support",
    "tensorflow_session_parallelism",
)
UNSUPPORTED = {  # flag: the only value dae serves with
    "use_alts_credentials": False,
    "prefer_tflite_model": False,
    "saved_model_tags": "serve",
    "platform_config_file": None,
    "thread_pool_factory_config_file": None,
    "mixed_precision": None,
    "ssl_config_file": None,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """tensorflow_model_server's flags, both spellings, and dae's own (dashed only)."""
    _flag(
        p,
        "model_base_path",
        help="DIR/serving/NAME (versions inside); or set MODEL_BASE_PATH "
        "and MODEL_NAME as the official image does",
    )
    _flag(p, "model_name", help="default: the base path's last folder name (TF Serving: default)")
    _flag(
        p,
        "model_config_file",
        help="TF Serving's ModelServerConfig (text format): "
        "several models, version policies and labels (then --model_name and "
        "--model_base_path are ignored)",
    )
    _flag(
        p,
        "model_config_file_poll_wait_seconds",
        type=float,
        default=0.0,
        help="re-read the model config file this often (default 0: never)",
    )
    _flag(p, "port", type=int, default=8500, help="gRPC port (default 8500; 0: no TCP gRPC)")
    _flag(p, "grpc_socket_path", help="also serve gRPC on this Unix domain socket")
    _flag(p, "rest_api_port", type=int, default=8501, help="REST port (default 8501; 0: no REST)")
    _flag(
        p,
        "rest_api_timeout_in_ms",
        type=int,
        default=None,
        help="a REST request's body must arrive within this (sets --rest-body-timeout-seconds)",
    )
    _flag(p, "enable_batching", type=_bool, default=False, help="batch requests together")
    _flag(p, "batching_parameters_file", help="TF Serving's BatchingParameters (text format)")
    _flag(
        p,
        "file_system_poll_wait_seconds",
        type=float,
        default=1.0,
        help="how often to look for new versions; 0 loads once",
    )
    _flag(p, "monitoring_config_file", help="TF Serving's MonitoringConfig: the Prometheus path")
    _flag(
        p,
        "tensorflow_intra_op_parallelism",
        type=int,
        default=0,
        help="threads of one op (default 0: TensorFlow's choice; 1 when batching)",
    )
    _flag(
        p,
        "tensorflow_inter_op_parallelism",
        type=int,
        default=0,
        help="ops run at once (default 0: TensorFlow's choice)",
    )
    _flag(
        p,
        "enable_model_warmup",
        type=_bool,
        default=True,
        help="replay assets.extra/tf_serving_warmup_requests at load (default true)",
    )
    _flag(
        p,
        "num_request_iterations_for_warmup",
        type=int,
        default=1,
        help="times each warmup request is replayed (default 1)",
    )
    _flag(
        p, "grpc_channel_arguments", default="", help="gRPC server arguments, key=value,key=value"
    )
    for name in NO_EFFECT:
        _flag(p, name, default=None, help=argparse.SUPPRESS)
    for name in UNSUPPORTED:
        _flag(p, name, default=None, help=argparse.SUPPRESS)
    p.add_argument("--version", action="store_true", help="print versions and exit")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--num-versions",
        type=int,
        default=1,
        help="serve the latest N versions (TF Serving's 'latest' policy; default 1)",
    )
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="larger requests (or tensors, once decoded) get INVALID_ARGUMENT / 400 "
        "(default 64 MiB)",
    )
    p.add_argument(
        "--max-request-rows",
        type=int,
        default=DEFAULT_MAX_ROWS,
        help=f"more rows in one request get INVALID_ARGUMENT / 400 (default {DEFAULT_MAX_ROWS}; "
        "TF Serving has no such cap)",
    )
    p.add_argument(
        "--rest-header-timeout-seconds",
        type=float,
        default=10.0,
        help="a REST request's line and headers must arrive within this (default 10; then 408)",
    )
    p.add_argument(
        "--rest-body-timeout-seconds",
        type=float,
        default=60.0,
        help="and its body within this (default 60; then 408)",
    )
    p.add_argument(
        "--rest-max-connections",
        type=int,
        default=512,
        help="REST connections open at once; one more closes the one idle the longest, "
        "or gets 503 when all are busy (default 512)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])


class ServeError(Exception):
    """A bad flag or an unusable base path; one line for the user."""


def _check_flags(args) -> None:
    for name, allowed in UNSUPPORTED.items():
        value = getattr(args, name)
        if value is not None and str(value).lower() != str(allowed).lower():
            raise ServeError(f"--{name}={value} is not supported by dae serve")
    for name in NO_EFFECT:
        if getattr(args, name) is not None:
            log.info("--%s has no effect in dae serve (accepted as TF Serving's)", name)
    for flag in (
        "num_versions",
        "max_request_rows",
        "max_request_bytes",
        "rest_max_connections",
        "num_request_iterations_for_warmup",
    ):
        if getattr(args, flag) < 1:
            raise ServeError(f"--{flag.replace('_', '-')} must be at least 1")
    for flag in (
        "port",
        "rest_api_port",
        "tensorflow_intra_op_parallelism",
        "tensorflow_inter_op_parallelism",
    ):
        if getattr(args, flag) < 0:
            raise ServeError(f"--{flag} must not be negative")
    for flag in ("rest_header_timeout_seconds", "rest_body_timeout_seconds"):
        if not getattr(args, flag) > 0:
            raise ServeError(f"--{flag.replace('_', '-')} must be positive")
    if args.port == 0 and not args.grpc_socket_path:
        raise ServeError("At least one of --port or --grpc_socket_path must be set")
    if args.rest_api_timeout_in_ms is not None:
        if args.rest_api_timeout_in_ms <= 0:
            raise ServeError("--rest_api_timeout_in_ms must be positive")
        args.rest_body_timeout_seconds = args.rest_api_timeout_in_ms / 1000


def model_configs(args, environ=os.environ):
    """The models to serve: the config file's, or one from the flags, or (no flags) the
    official image's environment: MODEL_NAME (default model) under MODEL_BASE_PATH
    (default /models)."""
    from dae.serving.model_server.model_config import (
        ServerConfigError,
        read_model_server_config,
        single_model,
    )

    if args.model_config_file:
        try:
            configs = read_model_server_config(args.model_config_file)
        except ServerConfigError as e:
            raise ServeError(str(e)) from None
    else:
        base, name = args.model_base_path, args.model_name
        if not base and ("MODEL_BASE_PATH" in environ or "MODEL_NAME" in environ):
            name = name or environ.get("MODEL_NAME") or "model"
            base = str(Path(environ.get("MODEL_BASE_PATH") or "/models") / name)
        if not base:
            raise ServeError(
                "Both --model_base_path and --model_config_file are empty "
                "(or set MODEL_BASE_PATH and MODEL_NAME, as the official image does)"
            )
        config = single_model(name or Path(base).expanduser().name, base, args.num_versions)
        configs = [config]
    for config in configs:
        if not config.base_path.is_dir():
            raise ServeError(f"model base path {config.base_path} does not exist")
    return configs


def _threads(args, batcher) -> None:
    """TF Serving's thread flags. Batching without them: one op thread per batch thread's
    share of the machine (concurrent model calls and the event loop otherwise fight for
    the same cores; on 2 cores a small batch then costs twice the CPU)."""
    import tensorflow as tf

    intra, inter = args.tensorflow_intra_op_parallelism, args.tensorflow_inter_op_parallelism
    if batcher is not None and not intra:
        intra = max(1, (os.cpu_count() or 1) // batcher.params.num_batch_threads)
    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # TF already ran in this process (an embedding caller): keep it
        log.debug("TF threads already set; left as they are")


def build(args):
    """Everything but the event loop: models, batcher, predictor. Raises ServeError."""
    from dae.serving.model_server.batching import Batcher, parse_batching_parameters
    from dae.serving.model_server.core import ServerCore
    from dae.serving.model_server.model_config import ServerConfigError, prometheus_path
    from dae.serving.model_server.predict import Limits, Predictor

    _check_flags(args)
    configs = model_configs(args)
    try:
        args.metrics_path = prometheus_path(args.monitoring_config_file)
    except ServerConfigError as e:
        raise ServeError(str(e)) from None
    batcher = None
    if args.batching_parameters_file and not args.enable_batching:
        log.warning(
            "--batching_parameters_file is ignored without --enable_batching "
            "(as TF Serving ignores it)"
        )
    if args.enable_batching:
        text = ""
        if args.batching_parameters_file:
            try:
                text = Path(args.batching_parameters_file).read_text()
            except OSError as e:
                raise ServeError(f"cannot read batching parameters file: {e.strerror}") from None
        try:
            batcher = Batcher(parse_batching_parameters(text))
        except ValueError as e:
            raise ServeError(str(e)) from None
    _threads(args, batcher)
    warmup = args.num_request_iterations_for_warmup if args.enable_model_warmup else 0
    core = ServerCore(args.file_system_poll_wait_seconds, warmup)
    core.configs = configs
    return Predictor(core, batcher, Limits(args.max_request_rows, args.max_request_bytes))


def _channel_arguments(text: str) -> list[tuple[str, object]]:
    """--grpc_channel_arguments: key=value pairs, numbers as integers (as TF Serving)."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ServeError(f"--grpc_channel_arguments: '{item}' is not key=value")
        pairs.append((key, int(value) if value.lstrip("-").isdigit() else value))
    return pairs


def _start_models(args, core) -> None:
    """Load every configured model (labels need their versions available), then watch the
    config file."""
    from dae.serving.model_server.model_config import ServerConfigError

    try:
        core.apply(core.configs)
    except ServerConfigError as e:
        core.stop()
        raise ServeError(str(e)) from None
    if args.model_config_file:
        core.watch(args.model_config_file, args.model_config_file_poll_wait_seconds)


async def serve(args, predictor, ready=None) -> None:
    import uvicorn

    from dae.serving.model_server.grpc_service import make_server
    from dae.serving.model_server.http_protocol import protocol
    from dae.serving.model_server.memory import Janitor
    from dae.serving.model_server.rest import make_app

    core = predictor.core
    predictor.janitor = Janitor()
    core.after_swap = predictor.janitor.due
    await asyncio.get_running_loop().run_in_executor(None, _start_models, args, core)
    address = f"{args.host}:{args.port}" if args.port else None
    try:
        grpc_server, grpc_port = make_server(
            predictor,
            address,
            args.max_request_bytes,
            unix_socket=args.grpc_socket_path,
            options=_channel_arguments(args.grpc_channel_arguments),
        )
    except OSError as e:
        core.stop()
        raise ServeError(f"{e} (in use, not allowed, or not an address of this machine)") from None
    await grpc_server.start()
    rest = rest_task = None
    if args.rest_api_port:
        config = uvicorn.Config(
            make_app(
                predictor,
                args.max_request_bytes,
                args.rest_body_timeout_seconds,
                metrics_path=args.metrics_path,
            ),
            host=args.host,
            port=args.rest_api_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            # httptools (not "auto": its silent h11 fallback adds ~0.4 ms a batch-64 call),
            # with JSON errors, pipelining in order, a header timeout and a connection cap.
            http=protocol(args.rest_header_timeout_seconds, args.rest_max_connections),
        )
        rest = uvicorn.Server(config)
    # SIGINT/SIGTERM stop both front ends: ours below, through asyncio. uvicorn's serve() also
    # takes them for its run (Server.capture_signals, signal.signal) and stops REST itself;
    # the signal still reaches asyncio's handlers (the wakeup fd is written for any handler).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if rest is not None:
        rest_task = asyncio.create_task(rest.serve())
        while not rest.started:
            if rest_task.done():
                await grpc_server.stop(None)
                core.stop()
                raise ServeError(f"cannot bind REST to {args.host}:{args.rest_api_port}")
            await asyncio.sleep(0.02)
    models = "; ".join(
        f"'{name}' versions {m.available()} from {m.base}" for name, m in core.managers.items()
    )
    where = [
        f"gRPC {args.host}:{grpc_port}" if grpc_port else None,
        f"gRPC unix:{args.grpc_socket_path}" if args.grpc_socket_path else None,
        f"REST {args.host}:{args.rest_api_port}" if rest else None,
    ]
    log.info(
        "serving model %s: %s, batching %s",
        models,
        ", ".join(filter(None, where)),
        "on" if predictor.batcher else "off",
    )
    if ready is not None:
        ready(grpc_port)
    await stop.wait()
    log.info("shutting down")
    if rest is not None:
        rest.should_exit = True
    await grpc_server.stop(grace=5)
    if rest_task is not None:
        await rest_task
    core.stop()
    predictor.janitor.stop()
    log.info("requests: %s", dict(predictor.counts) or "none")
    if predictor.batcher:
        b = predictor.batcher
        log.info("batching: %d rows in %d model calls", b.rows_run, b.batches_run)
        b.close()


def main(args) -> int:
    if args.version:
        from importlib.metadata import version

        import tensorflow as tf

        print(f"dae serve {version('dae')} (TF Serving's APIs)")
        print(f"TensorFlow Library: {tf.__version__}")
        return 0
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    predictor = build(args)
    asyncio.run(serve(args, predictor))
    return 0
