"""Serving throughput and latency, measured side by side in one run on this machine.

  in-process SavedModel calls (the limit) vs gRPC and REST through `dae serve`,
  at batch 1, 64 and 256; then 32 concurrent single-image gRPC clients without and with
  dynamic batching, and against a server that runs no model (echo), each with the CPU a
  request costs the server and the clients: what batching could reach on this machine.

Targets (issue 3): gRPC >= 0.8x and REST >= 0.5x of in-process at batch 64; batching >= 4x
the unbatched throughput for the 32 clients, with p99 <= 50 ms.

  .venv/bin/python bench/serving.py [--model VERSION_DIR | --filters F1 F2] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_model(root: Path, filters: tuple[int, int] | None) -> Path:
    """The conv family at its default point (what the pipeline pushes by default), or with
    other `filters`; untrained: serving cost does not depend on the weights."""
    from dae.components.models import build_model, hyperparameters
    from dae.serving.format.export import push

    hp = hyperparameters()
    if filters:
        hp.Fixed("filters_1", filters[0])
        hp.Fixed("filters_2", filters[1])
    model = build_model(hp, "conv", (28, 28, 1), 0.13, 0.31)
    print(f"conv model {hp.values}: {model.count_params():,} parameters")
    _, path = push(model, root / "denoiser")
    return path


def timed(call, seconds: float) -> tuple[int, list[float]]:
    """Call repeatedly for `seconds`; returns (calls, latencies in s)."""
    call()  # warm
    lat, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t)
    return len(lat), lat


def row(label: str, batch: int, calls: int, lat: list[float], limit: float | None) -> float:
    ips = batch * calls / sum(lat)
    ratio = f"{ips / limit:5.2f}x" if limit else "  1.00x"
    p50, p99 = np.percentile(lat, 50) * 1e3, np.percentile(lat, 99) * 1e3
    print(
        f"{label:<12} batch {batch:>3}: {ips:>9.0f} img/s  {ratio}  p50 {p50:6.2f} ms  "
        f"p99 {p99:6.2f} ms"
    )
    return ips


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clients_run(target: str, n: int, seconds: float, image, server_pid: int) -> dict:
    """`concurrent_clients`, plus the CPU the server and the clients spent per request."""
    before = cpu_seconds(server_pid), cpu_seconds(os.getpid())
    ips, lat = asyncio.run(concurrent_clients(target, n, seconds, image))
    after = cpu_seconds(server_pid), cpu_seconds(os.getpid())
    requests = len(lat) or 1
    return {
        "ips": ips,
        "lat": lat,
        "server_ms": (after[0] - before[0]) / requests * 1e3,
        "client_ms": (after[1] - before[1]) / requests * 1e3,
    }


async def concurrent_clients(target: str, n: int, seconds: float, image) -> tuple[float, list]:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    req = predict_pb2.PredictRequest()
    req.model_spec.name = "denoiser"
    req.inputs["images"].CopyFrom(tf.make_tensor_proto(image))
    lat: list[float] = []

    async def client(end):
        async with grpc.aio.insecure_channel(target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            await stub.Predict(req)
            while time.perf_counter() < end:
                t = time.perf_counter()
                await stub.Predict(req)
                lat.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(client(start + seconds) for _ in range(n)))
    return len(lat) / (time.perf_counter() - start), lat


def _echo_server(port: int, ready) -> None:
    """A PredictionService that answers with its input and runs no model: what grpc.aio's
    per-request cost alone allows on this machine, the ceiling of any batching."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    class Echo(prediction_service_pb2_grpc.PredictionServiceServicer):
        async def Predict(self, request, context):
            response = predict_pb2.PredictResponse()
            response.outputs["output_0"].CopyFrom(request.inputs["images"])
            return response

    async def serve():
        server = grpc.aio.server()
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Echo(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(serve())


def rpc_ceiling(clients: int, seconds: float, image) -> dict:
    import multiprocessing

    from dae.serving.model_server.process import free_port

    port, ctx = free_port(), multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_echo_server, args=(port, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the echo server did not start")
        return clients_run(f"127.0.0.1:{port}", clients, seconds, image, proc.pid)
    finally:
        proc.terminate()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a servable version dir (default: build one)")
    p.add_argument(
        "--filters",
        type=int,
        nargs=2,
        metavar=("F1", "F2"),
        help="build the conv family with these filters, not its defaults",
    )
    p.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    p.add_argument("--clients", type=int, default=32)
    args = p.parse_args()

    from dae.serving.apis.client import GrpcClient, RestClient
    from dae.serving.format.export import load_servable
    from dae.serving.model_server.process import ModelServerProcess, copy_version

    work = Path(tempfile.mkdtemp(prefix="dae-bench-"))
    model = Path(args.model) if args.model else build_model(work / "built", args.filters)
    denoise = load_servable(model)
    rng = np.random.default_rng(0)
    print(f"model {model}; {os.cpu_count()} cores; {args.seconds:.0f} s per measurement\n")

    import gc

    gc.freeze()  # this client process holds TensorFlow too; see model_server.manager
    base = work / "plain" / "denoiser"
    base.mkdir(parents=True)
    copy_version(model, base, 1)
    plain = ModelServerProcess(base)
    grpc_client, rest_client = (
        GrpcClient(plain.grpc, "denoiser"),
        RestClient(plain.rest, "denoiser"),
    )
    at64 = {}
    for batch in (1, 64, 256):
        x = rng.random((batch, 28, 28, 1)).astype(np.float32)
        limit = row("in-process", batch, *timed(lambda x=x: denoise(x), args.seconds), None)
        g = row("gRPC", batch, *timed(lambda x=x: grpc_client.predict(x), args.seconds), limit)
        r = row("REST", batch, *timed(lambda x=x: rest_client.predict(x), args.seconds), limit)
        if batch == 64:
            at64 = {"grpc": g / limit, "rest": r / limit}
        print()

    one = rng.random((1, 28, 28, 1)).astype(np.float32)
    unbatched = clients_run(plain.grpc, args.clients, args.seconds, one, plain.proc.pid)
    plain.stop()
    # TF Serving's --tensorflow_intra_op_parallelism=1: each single-image call on one thread.
    single = ModelServerProcess(base, "--tensorflow_intra_op_parallelism=1")
    one_thread = clients_run(single.grpc, args.clients, args.seconds, one, single.proc.pid)
    single.stop()
    params = work / "batching.txt"
    params.write_text(
        f"max_batch_size {{ value: {args.clients} }}\nbatch_timeout_micros {{ value: 2000 }}\n"
        "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 100 }\n"
    )
    base_b = work / "batched" / "denoiser"
    base_b.mkdir(parents=True)
    copy_version(model, base_b, 1)
    batched_server = ModelServerProcess(
        base_b, "--enable-batching", "--batching-parameters-file", str(params)
    )
    batched = clients_run(
        batched_server.grpc, args.clients, args.seconds, one, batched_server.proc.pid
    )
    metrics = batched_server.http.get("/monitoring/prometheus/metrics").text
    batched_server.stop()
    ceiling = rpc_ceiling(args.clients, args.seconds, one)
    cores = os.cpu_count() or 1
    runs = (
        ("unbatched", unbatched),
        ("1 op thread", one_thread),
        ("batched", batched),
        ("echo", ceiling),
    )
    for label, run in runs:
        p50, p99 = statistics.median(run["lat"]) * 1e3, np.percentile(run["lat"], 99) * 1e3
        used = (run["server_ms"] + run["client_ms"]) * run["ips"] / 1e3
        print(
            f"{args.clients} clients, {label:<11}: {run['ips']:>7.0f} img/s  p50 {p50:6.2f} ms  "
            f"p99 {p99:6.2f} ms  CPU per request: server {run['server_ms']:.2f} ms, clients "
            f"{run['client_ms']:.2f} ms ({used:.2f} of {cores} cores busy)"
        )
    counters = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line[0] != "#")
    rows, calls = (
        int(float(counters["dae_serving_batched_rows_total"])),
        int(float(counters["dae_serving_batches_total"])),
    )
    print(f"mean batch {rows / max(calls, 1):.1f} rows")
    base_ips = unbatched["ips"]
    print(f"echo (no model, the RPC layer alone) = {ceiling['ips'] / base_ips:.2f}x unbatched")
    # If every core were busy at the batched run's CPU cost per request (server + clients):
    # what batching could reach on this machine at that batch size.
    per_request = batched["server_ms"] + batched["client_ms"]
    bound = cores / per_request * 1e3
    print(
        f"batched, all {cores} cores busy at {per_request:.2f} ms CPU per request: "
        f"{bound:.0f} img/s = {bound / base_ips:.2f}x unbatched\n"
    )
    p99_b = np.percentile(batched["lat"], 99) * 1e3
    print("targets:")
    print(f"  gRPC / in-process at batch 64: {at64['grpc']:.2f}x (>= 0.8)")
    print(f"  REST / in-process at batch 64: {at64['rest']:.2f}x (>= 0.5)")
    ratio = batched["ips"] / base_ips
    print(
        f"  batched / unbatched, {args.clients} clients: {ratio:.2f}x (>= 4), "
        f"p99 {p99_b:.1f} ms (<= 50)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
