"""TF Serving's RunServer (test_util/tensorflow_model_server_test_base.py) for `dae serve`:
the command line it builds, one server process, readiness, and its cache of servers."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from support import DAE, free_port
from tfs_models import DATA, VERSIONS_CONFIG, Models, model_config

RPC_TIMEOUT = 20.0  # tensorflow_model_server_test.py's
HTTP_REST_TIMEOUT_MS = 5000  # the base's --rest_api_timeout_in_ms
READY_SECONDS = 240  # every server of the folder starts at once on a 2-core machine


@dataclass(frozen=True)
class RunArgs:
    """RunServer's arguments (its cache key, GetArgsKey), and what dae needs besides: the
    environment of the Docker image case and the models to wait for."""

    model_name: str | None
    model_path: Path | None
    model_config_file: Path | None = None
    monitoring_config_file: Path | None = None
    batching_parameters_file: Path | None = None
    grpc_channel_arguments: str = ""
    wait_for_server_ready: bool = True
    model_config_file_poll_period: int | None = None
    env: tuple[tuple[str, str], ...] = ()  # with it, no model flags (the image's entrypoint)
    ready_models: tuple[str, ...] = ("default",)


def run_server_command(args: RunArgs, port: int, rest_port: int, socket_path: str) -> list[str]:
    """The command line RunServer builds, with `dae serve` for tensorflow_model_server."""
    cmd = [DAE, "serve", f"--port={port}", f"--rest_api_port={rest_port}"]
    if args.env:  # the Docker image: MODEL_NAME and MODEL_BASE_PATH say what to serve
        return cmd
    cmd += [f"--rest_api_timeout_in_ms={HTTP_REST_TIMEOUT_MS}", f"--grpc_socket_path={socket_path}"]
    if args.model_config_file:
        cmd.append(f"--model_config_file={args.model_config_file}")
    elif args.model_path:
        cmd += [f"--model_name={args.model_name}", f"--model_base_path={args.model_path}"]
    else:
        raise ValueError("Both model_config_file and model_path cannot be empty!")
    if args.monitoring_config_file:
        cmd.append(f"--monitoring_config_file={args.monitoring_config_file}")
    if args.model_config_file_poll_period is not None:
        cmd.append(f"--model_config_file_poll_wait_seconds={args.model_config_file_poll_period}")
    if args.batching_parameters_file:
        cmd += ["--enable_batching", f"--batching_parameters_file={args.batching_parameters_file}"]
    channel_args = [a for a in (args.grpc_channel_arguments, "grpc.so_reuseaddr=1") if a]
    cmd.append(f"--grpc_channel_arguments={','.join(channel_args)}")
    return cmd


class ModelServer:
    """One `dae serve` process; its stderr (where it logs) in `log`."""

    def __init__(self, args: RunArgs, root: Path):
        self.args, self.root = args, root
        # A Unix socket path must be short (108 bytes): not under pytest's tmp dir.
        self.socket_dir = tempfile.mkdtemp(prefix="dae-tfs-", dir="/tmp")
        self.socket_path = os.path.join(self.socket_dir, "tf-serving.sock")
        self.http = None
        self._launch()

    def _launch(self) -> None:
        self.port, self.rest_port = free_port(), free_port()
        self.grpc = f"127.0.0.1:{self.port}"
        self.rest = f"http://127.0.0.1:{self.rest_port}"
        self.log = self.root / f"server-{self.rest_port}.stderr"
        env = {k: v for k, v in os.environ.items() if k not in ("MODEL_NAME", "MODEL_BASE_PATH")}
        env.update(self.args.env, TF_CPP_MIN_LOG_LEVEL="2")
        cmd = run_server_command(self.args, self.port, self.rest_port, self.socket_path)
        self.command = " ".join(cmd[1:])
        with open(self.log, "wb") as err, open(self.log.with_suffix(".stdout"), "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        if self.http is not None:
            self.http.close()
        self.http = httpx.Client(base_url=self.rest, timeout=RPC_TIMEOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> ModelServer:
        """Until every model of `ready_models` has a version AVAILABLE over REST, and gRPC
        accepts a connection. A port taken since free_port() found it: new ports, again."""
        deadline = time.monotonic() + READY_SECONDS
        for _attempt in range(3):
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if all(self._available(name) for name in self.args.ready_models):
                    with grpc.insecure_channel(self.grpc) as channel:
                        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
                    return self
                time.sleep(0.2)
            else:
                raise TimeoutError(f"{self.command} not ready:\n{self.output()[-3000:]}")
            text = self.output()
            if not re.search(r"in use|cannot bind|address already", text, re.IGNORECASE):
                raise RuntimeError(f"{self.command} exited {self.proc.returncode}:\n{text[-3000:]}")
            self._launch()
        raise RuntimeError(f"{self.command} could not bind:\n{self.output()[-3000:]}")

    def _available(self, name: str) -> bool:
        try:
            r = self.http.get(f"/v1/models/{name}")
        except httpx.HTTPError:
            return False
        if r.status_code != 200 or self.proc.poll() is not None:
            return False
        return any(s.get("state") == "AVAILABLE" for s in r.json()["model_version_status"])

    def wait_exit(self, seconds: float = READY_SECONDS) -> int:
        return self.proc.wait(timeout=seconds)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.http is not None:
            self.http.close()
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def _specs(m: Models) -> dict:
    """Each server of the folder: what RunServer is called with. Functions, so that a
    server's models (and config file) are made only when it starts."""

    def default(model_path: Path, **kwargs) -> RunArgs:  # RunServer('default', model_path)
        return RunArgs("default", model_path, **kwargs)

    def config(path: Path, *ready: str, **kwargs) -> RunArgs:  # RunServer(None, None, ...)
        return RunArgs(None, None, model_config_file=path, ready_models=ready, **kwargs)

    def reload_config(name: str, seconds: int) -> RunArgs:
        text = model_config("half_plus_two", m.half_plus_two)
        return config(
            m.config_file(name, text), "half_plus_two", model_config_file_poll_period=seconds
        )

    def versions_config() -> Path:
        text = VERSIONS_CONFIG.format(base=m.three_versions, two_versions=m.two_versions)
        return m.config_file("versions", text)

    return {
        "half_plus_two": lambda: default(m.half_plus_two),
        "half_plus_two_tf2": lambda: default(m.half_plus_two_tf2),
        "good_model_config": lambda: config(
            m.good_model_config, "half_plus_two", "half_plus_three"
        ),
        "bad_model_config": lambda: config(
            DATA / "bad_model_config.txt", wait_for_server_ready=False
        ),
        "model_config_reload": lambda: reload_config("reload", 1),
        "model_config_reload_zero_poll": lambda: reload_config("reload-zero", 0),
        "grpc_channel_args": lambda: default(
            m.half_plus_two,
            grpc_channel_arguments="grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb",
        ),
        "monitoring": lambda: default(
            m.half_plus_two, monitoring_config_file=DATA / "monitoring_config.txt"
        ),
        "tf_saved_model_save": lambda: default(m.tf_saved_model_save),
        "tf_saved_model_save_multiple_signatures": lambda: default(
            m.tf_saved_model_save_multiple_signatures
        ),
        "keras_sequential": lambda: default(m.keras_sequential),
        "distrat_keras_sequential": lambda: default(m.distrat_keras_sequential),
        "version_policies": lambda: config(
            versions_config(), *("latest2", "all", "specific", "labeled", "two_versions")
        ),
        "docker_env": lambda: RunArgs(
            None,
            None,
            ready_models=("m",),
            env=(("MODEL_NAME", "m"), ("MODEL_BASE_PATH", str(m.docker_models))),
        ),
    }


class ModelServers:
    """RunServer's cache of servers (model_servers_dict), by name; `start` does not wait."""

    def __init__(self, models: Models, root: Path):
        self.specs, self.root = _specs(models), root
        self.models = models
        self.servers: dict[str, ModelServer] = {}
        self.errors: dict[str, Exception] = {}  # servers that could not start, for their tests

    def start(self, key: str) -> ModelServer:
        if key in self.errors:
            raise self.errors[key]
        if key not in self.servers:
            try:
                self.servers[key] = ModelServer(self.specs[key](), self.root)
            except Exception as e:
                self.errors[key] = e
                raise
        return self.servers[key]

    def prestart(self, keys) -> None:
        for key in keys:
            with contextlib.suppress(Exception):  # raised again to the tests that use it
                self.start(key)

    def run(self, key: str) -> ModelServer:
        server = self.start(key)
        return server.wait_ready() if server.args.wait_for_server_ready else server

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
