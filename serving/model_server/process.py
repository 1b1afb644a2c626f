"""`dae serve` in a child process, as the benchmarks (bench/) and the tests start it: the
console script beside this interpreter on free ports, ready once its own log says it
serves on them, and versions published into its base path the way a pusher does."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

DAE = str(Path(sys.executable).with_name("dae"))  # the console script of this environment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ModelServerProcess:
    """`dae serve` in a subprocess on free gRPC and REST ports; `stop()` sends SIGTERM.
    Bound to `host` (default loopback; None: dae serve's own default, every address)."""

    def __init__(
        self,
        base: Path,
        *extra: str,
        name: str = "denoiser",
        host: str | None = "127.0.0.1",
        ready_seconds: float = 60,
    ):
        self.base, self.name, self.host, self.ready_seconds = base, name, host, ready_seconds
        for _attempt in range(3):  # a free port can be taken by another process before we bind
            if self._start(extra):
                return
        raise RuntimeError(f"dae serve could not bind: {self.log.read_text()[-2000:]}")

    def _start(self, extra) -> bool:
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.rest = f"http://127.0.0.1:{self.rest_port}"
        self.log = self.base.parent / f"serve-{self.rest_port}.log"
        cmd = [
            DAE,
            "serve",
            "--model-base-path",
            str(self.base),
            "--model-name",
            self.name,
            "--port",
            str(self.grpc_port),
            "--rest-api-port",
            str(self.rest_port),
            "--file-system-poll-wait-seconds",
            "0.2",
            *(["--host", self.host] if self.host else []),
            *extra,
        ]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.http = httpx.Client(base_url=self.rest, timeout=30)
        return self._wait_ready()

    def _wait_ready(self) -> bool:
        """Ready when our own process says it serves on our ports (not when something on
        the port answers: that could be another server)."""
        ready = f"REST {self.host or '0.0.0.0'}:{self.rest_port}"
        deadline = time.monotonic() + self.ready_seconds
        while time.monotonic() < deadline:
            text = self.log.read_text()
            if self.proc.poll() is not None:
                if "address already in use" in text or "cannot bind" in text:
                    self.http.close()
                    return False
                raise RuntimeError(f"dae serve exited: {text[-2000:]}")
            if ready in text:
                return True
            time.sleep(0.1)
        self.stop()  # not left running behind the caller's back: it has no handle yet
        raise TimeoutError(f"dae serve not ready: {self.log.read_text()[-2000:]}")

    def alive(self) -> bool:
        return self.proc.poll() is None and self.http.get(f"/v1/models/{self.name}").is_success

    def stop(self) -> int:
        self.http.close()
        self.proc.terminate()
        return self.proc.wait(timeout=30)


def copy_version(src: Path, base: Path, version: int) -> Path:
    """Publish `src` as `version` the way a pusher does: copy aside, then rename in."""
    tmp = base / f".tmp-copy-{version}"
    shutil.copytree(src, tmp)
    os.rename(tmp, base / str(version))
    return base / str(version)
