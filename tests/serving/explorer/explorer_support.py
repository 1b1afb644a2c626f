"""The explorer's own server in a thread of the test process (`dae explore` is wired in
the CLI by dae/cli.py; this runs the same add_arguments / build / server)."""

from __future__ import annotations

import argparse
import contextlib
import threading
import time

from dae.serving import explorer


@contextlib.contextmanager
def running_explorer(*argv: str):
    """`dae explore ARGV --port 0` in a thread: yields its URL, stops it after."""
    parser = argparse.ArgumentParser()
    explorer.add_arguments(parser)
    args = parser.parse_args([*argv, "--port", "0"])
    sock = explorer.bind(args.host, args.port)
    server = explorer.server(explorer.build(args))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the explorer did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
