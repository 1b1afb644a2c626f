"""`dae serve`'s command line: tensorflow_model_server's flags in its spellings (and dae's
own in dashes), checked before anything loads; the flags TF Serving has and dae serves in one
way only, or accepts without effect, are listed here."""

from __future__ import annotations

import argparse
import logging

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
    p.add_argument(
        "--host",
        default="0.0.0.0",
        help="address to bind (default 0.0.0.0: every address, as TF Serving; 127.0.0.1 keeps "
        "it to this machine)",
    )
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


def check_flags(args) -> None:
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
