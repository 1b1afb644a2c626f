"""`dae serve`: the embedded model server. One process, one event loop: gRPC (grpc.aio) and
REST (uvicorn) front ends over one Predictor and so one batching queue.

Production serves the same base path with the official tensorflow/serving image; the flag
names are TF Serving's where it has one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from dae.serving.model_server.flags import ServeError, check_flags

log = logging.getLogger("dae.serving")


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

    check_flags(args)
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
    log.info("requests: %s", predictor.request_counts() or "none")
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
