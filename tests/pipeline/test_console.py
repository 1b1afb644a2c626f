"""What a person sees: progress for the long stages, and no native log noise."""

import io
import os
import pty
import select
import subprocess

import pytest
from support import DAE, copy_root

from dae.pipeline.console import NATIVE_NOISE, Console

NOISE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"I0000 00:00:1796322624.087849   16618 port.cc:153] oneDNN custom operations are on.",
    b"E0000 00:00:1796322629.848993   16618 cuda_platform.cc:52] failed call to cuInit: ...",
    b"W0000 00:00:1796322629.848993      12 tensor_util.cc:3] something",
    b"To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild "
    b"TensorFlow with the appropriate compiler flags.",
]


def test_native_noise_is_recognised_and_nothing_else():
    assert all(NATIVE_NOISE.match(line) for line in NOISE)
    kept = [
        b"dae: error: data anomaly",
        b"Traceback (most recent call last):",
        b"I0000 is not a log line",
        b'  File "x.py", line 3',
    ]
    assert not any(NATIVE_NOISE.match(line) for line in kept)


def test_plain_progress_says_how_far_and_how_long(capsys):
    progress = Console("plain").progress("train", "epoch", 3)
    progress.advance(loss=0.25, val_loss=None)
    progress.advance(loss=0.125)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("train: epoch 1/3 loss 0.25 (") and "left)" in out[0]
    assert out[1].startswith("train: epoch 2/3 loss 0.125 (") and "s/epoch" in out[1]


def test_quiet_shows_nothing_and_a_terminal_gets_a_bar(capsys):
    quiet = Console("quiet")
    quiet.log("hidden")
    quiet.progress("tune", "trial", 2).advance(score=1.0)
    assert capsys.readouterr().out == ""
    stream = io.StringIO()
    bar = Console("tty", stream).progress("tune", "trial", 6)
    bar.advance(score=0.5, best=0.5)
    bar.close()
    assert "[tune] trial" in stream.getvalue() and "1/6" in stream.getvalue()


def _in_a_terminal(argv, env, timeout=900) -> tuple[int, str]:
    """Run argv with a pseudo-terminal as its stdout and stderr; all it printed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            raise TimeoutError(b"".join(chunks).decode(errors="replace")[-3000:])
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_a_run_in_a_terminal_shows_progress_and_no_noise(smoke_root, tmp_path):
    root = copy_root(smoke_root[0], tmp_path / "root")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code, screen = _in_a_terminal(
        [DAE, "run", "--profile", "smoke", "--root", str(root), "--set", "model.family=dense"], env
    )
    assert code == 0, screen[-3000:]
    assert "[tune] trial" in screen and "2/2" in screen  # the bars, with their counts
    assert "[train] epoch" in screen and "/15" in screen and "val_loss" in screen
    lines = screen.replace("\r", "\n").splitlines()
    assert not [x for x in lines if NATIVE_NOISE.match(x.strip().encode())], "native log lines"
    assert not [x for x in lines if "Warning" in x or "warnings.warn" in x], "Python warnings"
    assert "run " in screen and ": succeeded" in screen
