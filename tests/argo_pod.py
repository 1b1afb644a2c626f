"""A Pod of the local Argo runner (argo_local.py) as a process: the image's ENV, mount paths
as folders, the cluster's DNS as a `dae` shim, the process's exit and peak memory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHIM = '''#!{python}
"""Cluster DNS for one Pod: Services and Pod names -> 127.0.0.1 ports, then the real dae."""
import json, os, sys
hosts = json.loads(os.environ.pop("ARGO_LOCAL_DNS", "{{}}"))
if "TF_CONFIG" in os.environ:
    tf = json.loads(os.environ["TF_CONFIG"])
    tf["cluster"] = {{k: [hosts.get(a, a) for a in v] for k, v in tf["cluster"].items()}}
    os.environ["TF_CONFIG"] = json.dumps(tf)
ip, port = os.environ.get("KERASTUNER_ORACLE_IP"), os.environ.get("KERASTUNER_ORACLE_PORT")
if ip and port:
    ip, port = hosts.get(f"{{ip}}:{{port}}", f"{{ip}}:{{port}}").rsplit(":", 1)
    os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"] = ip, port
os.execv({dae!r}, [{dae!r}, *sys.argv[1:]])
'''


def wait(proc: subprocess.Popen, record: PodRun) -> int:
    """Wait for a process; its peak memory is the kernel's high-water mark of the program it
    ends as (VmHWM starts over at exec: the shim's or sh's own do not count)."""
    status = proc.pid
    while True:
        try:
            text = Path(f"/proc/{proc.pid}/status").read_text()
            hwm = re.search(r"VmHWM:\s+(\d+) kB", text)
            if hwm:
                record.max_rss_mb = max(record.max_rss_mb, round(int(hwm.group(1)) / 1024, 1))
        except OSError:
            pass
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            return status
        time.sleep(0.1)


def image_env() -> dict[str, str]:
    """The runtime image's ENV (the Dockerfile's last stage), PATH aside."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    env = {}
    for line in text.split("FROM ")[-1].splitlines():
        if line.startswith("ENV "):
            env |= dict(kv.split("=", 1) for kv in line[4:].split())
    env.pop("PATH", None)
    return env


@dataclass
class PodRun:
    task: str
    node: str
    pod: str
    argv: list[str]
    env: dict[str, str]
    started: float = 0.0
    finished: float = 0.0
    exit_code: int | None = None
    max_rss_mb: float = 0.0
    attempt: int = 0
    log: Path | None = None
    limits: dict = field(default_factory=dict)
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def seconds(self) -> float:
        return round(self.finished - self.started, 1)


def local_paths(text: str, mounts: dict[str, Path]) -> str:
    """Mount paths in a value -> their folders, in one pass (a folder may lie in /tmp)."""
    if not mounts:
        return text
    paths = "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True))
    pattern = rf"(?<![\w/.])({paths})(?=/|\b|$)"
    return re.sub(pattern, lambda m: str(mounts[m.group(1)]), text)
