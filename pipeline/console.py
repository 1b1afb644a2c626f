"""What `dae run` shows a person: each stage's lines, its progress (a bar on a terminal, one
plain line per step in a log, nothing with --quiet), and not TensorFlow's start-up noise.

TensorFlow's C++ side writes to file descriptor 2 before any Python logging is set up
(oneDNN notices, "Could not find cuda drivers", a cuInit error on every CPU machine), so
those lines are filtered at the descriptor: everything else written there passes through.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
import time
import warnings
from typing import TextIO

# absl's "I0000 00:00:1796.. 123 file.cc:45] ..." lines and their companions.
NATIVE_NOISE = re.compile(
    rb"^([IWE]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .*rebuild TensorFlow)"
)
# Python warnings a user cannot act on (Keras Tuner restores a model without its optimizer).
HARMLESS_WARNINGS = (r"Skipping variable loading for optimizer",)


def filter_native_logs() -> TextIO:
    """Route fd 2 through a filter that drops TensorFlow's native log lines; returns a
    stream on the real stderr (for progress bars, which must not wait for a newline)."""
    real = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def pump():
        pending = b""
        with os.fdopen(read, "rb", buffering=0) as src:
            while chunk := src.read(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                kept = b"".join(line + b"\n" for line in lines if not NATIVE_NOISE.match(line))
                if kept:
                    os.write(real, kept)
        if pending and not NATIVE_NOISE.match(pending):
            os.write(real, pending)

    thread = threading.Thread(target=pump, name="native-log-filter", daemon=True)
    thread.start()

    def restore():
        sys.stderr.flush()
        os.dup2(real, 2)  # the pipe's last writer closes: the pump drains and ends
        thread.join(timeout=2)

    atexit.register(restore)
    return os.fdopen(os.dup(real), "w", buffering=1)


def quiet_python_warnings() -> None:
    for message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


class Console:
    """The run's output. `mode`: "tty" (bars), "plain" (a line per step) or "quiet"."""

    def __init__(self, mode: str = "plain", stream: TextIO | None = None):
        self.mode, self.stream = mode, stream or sys.stderr

    @classmethod
    def for_terminal(cls, quiet: bool, stream: TextIO | None = None) -> Console:
        stream = stream or sys.stderr
        if quiet:
            return cls("quiet", stream)
        return cls("tty" if stream.isatty() else "plain", stream)

    def log(self, message: str) -> None:
        if self.mode != "quiet":
            print(message, flush=True)

    def progress(self, stage: str, unit: str, total: int | None) -> ConsoleProgress:
        return ConsoleProgress(self, stage, unit, total)


class ConsoleProgress:
    """Steps of one stage (trials, epochs): what each reported, its pace, the time left."""

    def __init__(self, console: Console, stage: str, unit: str, total: int | None):
        self.console, self.stage, self.unit, self.total = console, stage, unit, total
        self.done, self.start = 0, time.monotonic()
        self.bar = None
        if console.mode == "tty":
            from tqdm import tqdm

            try:  # a terminal that reports no width (a fresh pseudo-terminal) gets 100
                width = os.get_terminal_size(console.stream.fileno()).columns
            except (OSError, ValueError):
                width = 0
            self.bar = tqdm(
                total=total,
                desc=f"[{stage}] {unit}",
                unit=unit,
                leave=True,
                file=console.stream,
                ncols=None if width else 100,
                dynamic_ncols=bool(width),
            )

    def advance(self, **fields) -> None:
        self.done += 1
        shown = " ".join(f"{k} {_fmt(v)}" for k, v in fields.items() if v is not None)
        if self.bar is not None:
            self.bar.set_postfix_str(shown, refresh=False)
            self.bar.update(1)
            return
        if self.console.mode == "quiet":
            return
        elapsed = time.monotonic() - self.start
        pace = elapsed / self.done
        of = f"/{self.total}" if self.total else ""
        left = ""
        if self.total and self.total > self.done:
            left = f", ~{_duration(pace * (self.total - self.done))} left"
        print(
            f"{self.stage}: {self.unit} {self.done}{of} {shown} "
            f"({pace:.1f} s/{self.unit}, {_duration(elapsed)} elapsed{left})".replace("  ", " "),
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
