"""The README's "First five minutes", run as written.

The commands are parsed out of README.md's block, so the text and the test cannot drift.
Only the root and the ports are substituted: `make smoke` gets ROOT (the Makefile's own
variable) pointing at a copy of the session's smoke root, where its run is all cached, and
`dae-root` and the ports 8500, 8501 and 8080 in the other commands follow. The servers
(`dae serve ... &`, `dae explore`) run in the background until the block is done.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from support import copy_root, free_port

REPO = Path(__file__).resolve().parent.parent
SERVERS = ("dae serve", "dae explore")


def readme_block() -> list[str]:
    """The block's commands: continuation lines joined, comments dropped."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## First five minutes\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```sh\n(.*?)^```", section, re.M | re.S).group(1)
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        command = re.sub(r"\s+#\s.*$", "", line).strip()
        if command:
            commands.append(" ".join(command.split()))
    return commands


def test_the_block_has_what_a_newcomer_needs():
    """Runs without the smoke root: the block's shape, for the slow test below to rely on."""
    commands = readme_block()
    assert commands[0].startswith("export PATH=$PWD/.venv/bin:")
    for start in ("make smoke", "dae serve", "curl", "dae denoise", "dae explore"):
        assert any(c.startswith(start) for c in commands), f"no `{start}` in the block"


class Background:
    """A server line, started as written (without its `&`), ready once its own log names
    every port of its command line; stopped with SIGTERM."""

    def __init__(self, script: str, command: str, log: Path, ports):
        self.ports = [p for p in ports if re.search(rf"\b{p}\b", command)]
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                ["bash", "-c", f"{script}\nexec {command.rstrip('& ')}"],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, seconds: float = 300) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            text = self.log.read_text()
            assert self.proc.poll() is None, f"exited:\n{text[-2000:]}"
            if all(f":{port}" in text for port in self.ports):
                return
            time.sleep(0.2)
        raise TimeoutError(f"not ready:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.mark.slow
def test_first_five_minutes_as_written(smoke_root, tmp_path):
    root = copy_root(smoke_root[0], tmp_path / "dae-root")
    ports = {"8500": str(free_port()), "8501": str(free_port()), "8080": str(free_port())}

    def substitute(command: str) -> str:
        command = re.sub(r"(?<![\w/.-])dae-root(?=/)", str(root), command)
        return re.sub(r"\b(8500|8501|8080)\b", lambda m: ports[m.group(1)], command)

    commands = [substitute(c) for c in readme_block()]
    exports = "\n".join(c for c in commands if c.startswith("export "))
    script = f"set -eo pipefail\n{exports}"
    env = {**os.environ, "ROOT": str(root)}
    servers: list[Background] = []
    outputs: dict[str, str] = {}
    try:
        for i, command in enumerate(c for c in commands if not c.startswith("export ")):
            if command.startswith(SERVERS):
                server = Background(script, command, tmp_path / f"server-{i}.log", ports.values())
                servers.append(server)
                server.wait_ready()
                outputs[command] = server.log.read_text()
                continue
            proc = subprocess.run(
                ["bash", "-c", f"{script}\n{command}"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
            outputs[command] = proc.stdout
        check_outputs(outputs, root, ports)
        page = httpx.get(f"http://127.0.0.1:{ports['8080']}/", timeout=30)
        assert page.status_code == 200 and "<html" in page.text
    finally:
        for server in servers:
            server.stop()


def check_outputs(outputs: dict[str, str], root: Path, ports: dict[str, str]) -> None:
    """What each command said: the pushed version make smoke prints is the one served,
    the model is AVAILABLE, predict answers one 28x28x1 image, the batch was written."""
    (smoke,) = [out for c, out in outputs.items() if c.startswith("make smoke")]
    pushed = re.search(r"^pushed: version (\d+) at (\S+)$", smoke, re.M)
    assert pushed, smoke[-2000:]
    base = Path(pushed.group(2)).parent
    assert base == root / "serving" / "denoiser"
    (serve,) = [c for c in outputs if c.startswith("dae serve")]
    assert f"--model_base_path={base}" in serve
    assert f"versions [{pushed.group(1)}]" in outputs[serve]

    (status,) = [out for c, out in outputs.items() if re.match(r"curl -s \S+/denoiser$", c)]
    versions = json.loads(status)["model_version_status"]
    assert [(v["version"], v["state"]) for v in versions] == [(pushed.group(1), "AVAILABLE")]
    (predict,) = [out for c, out in outputs.items() if c.endswith(":predict")]
    (image,) = json.loads(predict)["predictions"]
    assert (len(image), len(image[0]), len(image[0][0])) == (28, 28, 1)

    (denoise,) = [(c, out) for c, out in outputs.items() if c.startswith("dae denoise")]
    summary = re.search(r"(\d+) images in, (\d+) written, 0 skipped", denoise[1])
    assert summary and summary.group(1) == summary.group(2), denoise[1]
    output = Path(re.search(r"--output (\S+)", denoise[0]).group(1))
    assert len(list(output.glob("*.png"))) == int(summary.group(2)) > 0
