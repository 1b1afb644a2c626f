"""Soak `dae serve` through every fault of issue 15 while N clients predict for T seconds.

Half the clients speak gRPC, half REST, against one server with dynamic batching. Along the
run: a good push, a corrupt push (saved_model.pb cut in half), a push of another input
shape (32x32), the removal of the served version and of the newer bad ones (the server
must reload version 1 before letting go of the served one), then two more good pushes.
Traffic goes only to the 127.0.0.1 server started here; the run stops by itself.

Prints requests, failures by code, p50/p99 latency, the versions answering over time and
the server's RSS at start, peak and end. Target: 0 failures, RSS growth under 10%.

  .venv/bin/python bench/soak.py [--clients 16] [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build(base: Path, shape=(28, 28, 1)) -> Path:
    """The conv family at its default point (what the pipeline pushes), untrained."""
    from dae.components.models import build_model, hyperparameters
    from dae.serving.format.export import push

    model = build_model(hyperparameters(), "conv", shape, 0.13, 0.31)
    return push(model, base)[1]


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


class Soak:
    def __init__(self, server, seconds: float):
        self.server, self.seconds = server, seconds
        self.start = time.monotonic()
        self.lock = threading.Lock()
        self.codes: Counter[str] = Counter()
        self.latency: list[float] = []
        self.versions: dict[int, Counter[int]] = {}  # second -> gRPC answers by version
        self.events: list[tuple[float, str]] = []
        self.rss: list[float] = []

    def done(self) -> bool:
        return time.monotonic() - self.start >= self.seconds

    def record(self, code: str, seconds: float, version: int | None = None) -> None:
        with self.lock:
            self.codes[code] += 1
            self.latency.append(seconds)
            if version is not None:
                second = int(time.monotonic() - self.start)
                self.versions.setdefault(second, Counter())[version] += 1

    def grpc_client(self, seed: int) -> None:
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(self.server.grpc)
        )
        rng = np.random.default_rng(seed)
        while not self.done():
            req = predict_pb2.PredictRequest()
            req.model_spec.name = "denoiser"
            req.inputs["images"].CopyFrom(tf.make_tensor_proto(rng.random((1, 28, 28, 1), "f")))
            t = time.perf_counter()
            try:
                out = stub.Predict(req, timeout=30)
                self.record("OK", time.perf_counter() - t, out.model_spec.version.value)
            except grpc.RpcError as e:
                self.record(e.code().name, time.perf_counter() - t)

    def rest_client(self, seed: int) -> None:
        from dae.serving.apis.client import RestClient, ServingClientError

        client = RestClient(self.server.rest, "denoiser")
        rng = np.random.default_rng(seed)
        while not self.done():
            t = time.perf_counter()
            try:
                client.predict(rng.random((1, 28, 28, 1), "f"))
                self.record("OK", time.perf_counter() - t)
            except ServingClientError as e:
                self.record(f"HTTP {e.code}", time.perf_counter() - t)
            except OSError as e:
                self.record(type(e).__name__, time.perf_counter() - t)
        client.close()

    def sample_rss(self) -> None:
        while not self.done():
            self.rss.append(rss_mib(self.server.proc.pid))
            time.sleep(0.25)

    def event(self, what: str) -> None:
        self.events.append((time.monotonic() - self.start, what))


def prepare(good: Path, work: Path) -> tuple[Path, Path]:
    """A corrupt copy of `good`, and a model of another input shape."""
    bad = work / "bad"
    shutil.copytree(good, bad)
    pb = bad / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 2])
    return bad, build(work / "other", (32, 32, 1))


def faults(soak: Soak, base: Path, good: Path, bad: Path, other: Path, work: Path) -> None:
    """The schedule, as fractions of the run."""
    from dae.serving.model_server.process import copy_version

    def at(fraction: float) -> None:
        while time.monotonic() - soak.start < fraction * soak.seconds:
            time.sleep(0.05)

    at(0.10)
    copy_version(good, base, 2)
    soak.event("push v2 (good)")
    at(0.25)
    copy_version(bad, base, 3)
    soak.event("push v3 (saved_model.pb cut in half)")
    at(0.40)
    copy_version(other, base, 4)
    soak.event("push v4 (32x32 input)")
    at(0.55)
    for v in (4, 3, 2):
        os.rename(base / str(v), work / f"removed-{v}")
    soak.event("remove v4, v3 and the served v2 (v1 must come back first)")
    at(0.70)
    copy_version(good, base, 5)
    soak.event("push v5 (good)")
    at(0.85)
    copy_version(good, base, 6)
    soak.event("push v6 (good)")


def timeline(versions: dict[int, Counter[int]]) -> str:
    """Runs of seconds with the same set of answering versions."""
    runs, last = [], None
    for second in sorted(versions):
        seen = tuple(sorted(versions[second]))
        if seen != last:
            runs.append([second, second, seen])
            last = seen
        else:
            runs[-1][1] = second
    return "; ".join(f"{a}-{b + 1}s: v{'+v'.join(map(str, s))}" for a, b, s in runs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args()

    from dae.serving.model_server.process import ModelServerProcess

    work = Path(tempfile.mkdtemp(prefix="dae-soak-"))
    try:
        base = work / "serving" / "denoiser"
        good = build(base)
        shutil.copytree(good, work / "good")
        bad, other = prepare(good, work)
        params = work / "batching.txt"
        params.write_text(
            "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 2000 }\n"
            "num_batch_threads { value: 2 }\n"
        )
        server = ModelServerProcess(
            base,
            "--enable-batching",
            "--batching-parameters-file",
            str(params),
            "--file-system-poll-wait-seconds",
            "0.5",
        )
        try:
            for _ in range(20):  # warm both paths before the baseline
                server.http.post(
                    "/v1/models/denoiser:predict",
                    json={"instances": np.zeros((1, 28, 28, 1)).tolist()},
                )
            time.sleep(1)
            start_rss = rss_mib(server.proc.pid)
            soak = Soak(server, args.seconds)
            threads = [threading.Thread(target=soak.sample_rss)]
            schedule = (soak, base, work / "good", bad, other, work)
            threads.append(threading.Thread(target=faults, args=schedule))
            for i in range(args.clients):
                client = soak.grpc_client if i % 2 == 0 else soak.rest_client
                threads.append(threading.Thread(target=client, args=(i,)))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(3)  # the janitor's and the version manager's settling
            end_rss = rss_mib(server.proc.pid)
            status = server.http.get("/v1/models/denoiser").json()["model_version_status"]
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    total = sum(soak.codes.values())
    failures = {k: v for k, v in soak.codes.items() if k != "OK"}
    lat = np.array(soak.latency) * 1e3
    peak = max([start_rss, end_rss, *soak.rss])
    print(
        f"soak: {args.clients} clients ({(args.clients + 1) // 2} gRPC, "
        f"{args.clients // 2} REST) for {args.seconds:g} s, batching on"
    )
    for when, what in soak.events:
        print(f"  {when:5.1f} s  {what}")
    print(
        f"requests: {total} ({total / args.seconds:.0f}/s), failed: {sum(failures.values())}"
        f" {failures or ''}"
    )
    print(f"latency: p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms")
    print(f"versions answering gRPC over time: {timeline(soak.versions)}")
    print(
        "final status: "
        + ", ".join(
            f"v{s['version']} {s['state']}"
            + (f" ({s['status']['error_message'][:150]})" if s["status"]["error_message"] else "")
            for s in status
        )
    )
    growth = (end_rss / start_rss - 1) * 100
    print(
        f"RSS: start {start_rss:.0f} MiB, peak {peak:.0f} MiB, end {end_rss:.0f} MiB "
        f"({growth:+.1f}%)"
    )
    return 0 if not failures and growth < 10 else 1


if __name__ == "__main__":
    sys.exit(main())
