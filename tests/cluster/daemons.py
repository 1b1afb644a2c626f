"""The cluster's daemons as plain processes (no systemd here): each in its own session, so
stopping it kills its whole process group, logging to `<name>.log` in the state folder;
started in order, each waited for by a readiness check before the next."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path


class DaemonError(RuntimeError):
    pass


def start(name: str, argv: list[str], logs: Path, env: dict[str, str] | None = None) -> int:
    """Start `argv` in a new session; its output goes to `logs/<name>.log`. Returns the pid."""
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    return proc.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child we started and nobody reaped yet is a zombie: not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def stop(pid: int, grace: float = 10) -> None:
    """SIGTERM the process group `pid` leads, SIGKILL what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not alive(pid):
                return
            time.sleep(0.1)


def wait_until(
    name: str, ready: Callable[[], bool], pid: int | None, log: Path, timeout: float = 120
) -> None:
    """Poll `ready` until it holds; fail with the log's tail if the daemon dies or never gets
    there (a readiness wait, not a timed test: the timeout only bounds a broken start)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if pid is not None and not alive(pid):
            raise DaemonError(f"{name} exited during start-up; {log}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise DaemonError(f"{name} not ready after {timeout:.0f} s; {log}:\n{tail(log)}")
        time.sleep(0.3)


def tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def socket_ready(path: Path) -> Callable[[], bool]:
    def ready() -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(path))
                return True
            except OSError:
                return False

    return ready


def http_ok(url: str, context: ssl.SSLContext | None = None) -> Callable[[], bool]:
    """True when `url` answers 200 (healthz/readyz endpoints)."""

    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    return ready


def tls_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    return context
