"""`dae denoise` as a user sees it: what a PNG folder's odd entries print, and a server's
Unix socket given as `dae serve` prints it."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import DAE, digit_like

from dae import cli


def write_pngs(folder: Path, count: int, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"img{i}.png" for i in range(count)]
    for name, image in zip(names, digit_like(count, seed=seed)[0], strict=True):
        Image.fromarray(image[..., 0]).save(folder / name)
    return names


def png_bomb(path: Path, side: int = 12000) -> None:
    """A PNG of a few bytes that declares side x side 8-bit gray pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    body = (
        chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")
    )
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def as_a_user(*args: str) -> subprocess.CompletedProcess:
    """The console script with the environment a user has (no TF_CPP_MIN_LOG_LEVEL)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([DAE, *args], capture_output=True, text=True, env=env, timeout=300)


def test_a_png_bomb_is_one_line_and_no_warning(server, tmp_path):
    folder = tmp_path / "in"
    write_pngs(folder, 1)
    png_bomb(folder / "bomb.png")
    proc = as_a_user(
        "denoise",
        "--input",
        str(folder),
        "--output",
        str(tmp_path / "o.npy"),
        "--server",
        server.grpc,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"dae: skipped {folder / 'bomb.png'}: declares 12000x12000 pixels, over the "
        f"{1 << 24} pixel limit (not decoded)",
        "dae: skipped 1 of 2 images",
    ]
    assert "2 images in, 1 written, 1 skipped" in proc.stdout


def test_links_that_lead_nowhere_are_reported_like_bad_images(server, tmp_path, capsys):
    folder = tmp_path / "in"
    write_pngs(folder, 2)
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "ping.png").symlink_to("pong.png")
    (folder / "pong.png").symlink_to("ping.png")
    (folder / "gone.png").symlink_to(tmp_path / "nothing.png")
    (folder / "sub.png").mkdir()
    out = tmp_path / "o.npy"
    assert (
        cli.main(
            ["denoise", "--input", str(folder), "--output", str(out)]
            + [
                "--server",
                server.grpc,
            ]
        )
        == 0
    )
    stdout, err = capsys.readouterr()
    assert "7 images in, 2 written, 5 skipped" in stdout
    assert err.splitlines() == [
        f"dae: skipped {folder / 'gone.png'}: cannot be read: No such file or directory",
        f"dae: skipped {folder / 'loop.png'}: is a symlink loop",
        f"dae: skipped {folder / 'ping.png'}: is a symlink loop",
        f"dae: skipped {folder / 'pong.png'}: is a symlink loop",
        f"dae: skipped {folder / 'sub.png'}: cannot be read: Is a directory",
        "dae: skipped 5 of 7 images",
    ]
    assert np.load(out).shape == (2, 28, 28, 1)


@pytest.fixture
def short_dir():
    """A Unix socket's path must fit in 108 bytes: pytest's tmp_path may not."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="dae-sock-") as d:
        yield Path(d)


def test_the_grpc_socket_the_server_prints(make_server, short_dir, tmp_path, capsys):
    server = make_server("--grpc_socket_path", str(short_dir / "grpc.sock"))
    address = re.search(r"gRPC (unix:\S+?),", server.log.read_text())[1]
    assert address == f"unix:{short_dir / 'grpc.sock'}"
    folder, out = tmp_path / "in", tmp_path / "o.npy"
    write_pngs(folder, 3)
    argv = ["denoise", "--input", str(folder), "--output", str(out), "--server", address]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert "3 images in, 3 written" in capsys.readouterr().out
    assert np.load(out).shape == (3, 28, 28, 1)

    assert cli.main([*argv, "--overwrite", "--rest"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"dae: error: --server {address} is a gRPC socket: --rest needs HOST:PORT"
    ]
