"""`dae serve` under attack (issue 15), what outlives a request: versions pushed, broken,
reshaped and removed under a stream of requests (D1), memory given back (D3), and the files
`dae denoise` is handed (D7)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time

import grpc
import numpy as np
import pytest
from hostile import Stream, request, rss_mib, status, still_serving, stub, wait
from support import copy_version
from tensorflow_serving.apis import prediction_service_pb2_grpc

# ---- D1: a failed or removed version never takes the model down ---------------------------


def _corrupt_copy(model_dir, where):
    shutil.copytree(model_dir, where)
    pb = where / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 2])
    return where


def _other_shape_model(base):
    import keras

    from dae.serving.format import export

    model = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Rescaling(1.0)])
    return export.push(model, base)[0]


def test_d1_bad_pushes_and_removals_never_take_the_model_down(make_server, model_dir, tmp_path):
    server = make_server()
    stream = Stream(server.rest)
    try:
        stream.phase = "corrupt push"
        copy_version(_corrupt_copy(model_dir, tmp_path / "bad"), server.base, 2)
        wait(lambda: status(server).get(2, ("",))[0] == "END", what="v2 to fail")
        time.sleep(1)
        assert status(server)[1][0] == "AVAILABLE" and "load" in status(server)[2][1]

        stream.phase = "fixed in place"  # the failed version is retried when it changes
        good = (model_dir / "saved_model.pb").read_bytes()
        (server.base / "2" / "saved_model.tmp").write_bytes(good)
        os.replace(server.base / "2" / "saved_model.tmp", server.base / "2" / "saved_model.pb")
        wait(lambda: status(server)[2][0] == "AVAILABLE", what="v2 to be retried")
        wait(lambda: status(server)[1][0] == "END", what="v1 to be unloaded")

        stream.phase = "other shape"
        v3 = _other_shape_model(server.base)
        wait(lambda: status(server).get(v3, ("",))[0] == "END", what="v3 to be refused")
        assert "[N, 32, 32, 1]" in status(server)[v3][1], status(server)
        assert status(server)[2][0] == "AVAILABLE"

        stream.phase = "removed"  # back to v1: loaded again before v2 is let go
        for v in (v3, 2):
            os.rename(server.base / str(v), server.base / f".removed-{v}")
        wait(lambda: status(server)[1][0] == "AVAILABLE", what="v1 to be reloaded")
        time.sleep(0.5)
    finally:
        stream.stop()
    assert stream.failures == []
    assert {"corrupt push", "fixed in place", "other shape", "removed"} <= set(stream.versions)
    versions = [
        stub(server).Predict(request(), timeout=30).model_spec.version.value for _ in range(3)
    ]
    assert versions == [1, 1, 1]


# ---- D3: memory given back ----------------------------------------------------------------


def test_d3_memory_returns_near_its_baseline(make_server, model_dir):
    server = make_server()
    pid = server.proc.pid
    for _ in range(3):
        still_serving(server)
    time.sleep(1)
    baseline = rss_mib(pid)
    big_stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(server.grpc, options=[("grpc.max_send_message_length", 1 << 28)])
    )
    big = request(np.full((8000, 28, 28, 1), 0.5, np.float32))  # 25 MB: over the rows cap
    accepted = request(np.full((1000, 28, 28, 1), 0.5, np.float32))
    for one in [big, accepted] * 6:
        with contextlib.suppress(grpc.RpcError):
            big_stub.Predict(one, timeout=60)
    for v in (2, 3, 4):  # and version swaps
        copy_version(model_dir, server.base, v)
        wait(lambda v=v: status(server).get(v, ("",))[0] == "AVAILABLE", what=f"v{v}")
    wait(
        lambda: rss_mib(pid) < baseline * 1.10,
        seconds=15,
        what=f"RSS back near {baseline:.0f} MiB (now {rss_mib(pid):.0f})",
    )


# ---- D7: `dae denoise` and links ---------------------------------------------------------


@pytest.mark.parametrize("which", ["--input", "--output"])
def test_d7_a_symlink_loop_is_one_line(tmp_path, model_dir, capsys, which):
    from dae import cli

    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    np.save(tmp_path / "in.npy", np.zeros((1, 28, 28), np.uint8))
    paths = {"--input": str(tmp_path / "in.npy"), "--output": str(tmp_path / "out.npy")}
    paths[which] = str(tmp_path / "a")
    argv = ["denoise", *(x for kv in paths.items() for x in kv), "--model", str(model_dir)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dae: error:") and "symlink loop" in err[-1], err
    assert "internal" not in err[-1]


def test_d7_a_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    import struct
    import zlib

    from PIL import ImageFile

    from dae.serving.batch import sources

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    side = 12000  # 144 Mpx of black, 139 KB compressed
    rows = zlib.compress(b"\0" * (side + 1) * side, 9)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )
    (tmp_path / "bomb.png").write_bytes(png)
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: decoded.append(im.size) or load(im))
    with pytest.raises(ValueError, match="12000x12000"):
        sources.read_png(tmp_path / "bomb.png")
    assert decoded == []
