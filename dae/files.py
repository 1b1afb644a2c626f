"""Files written whole or not at all, and their fingerprints: one helper each for every layer.

Writes go to a temporary file beside the target and are renamed over it, so a reader (or a
run killed mid-write) never sees half a file. The result is readable by others as the
process's umask allows (0644 by default), not mkstemp's 0600: on a shared volume the other
Pods must read what one Pod wrote.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

BLOCK = 1 << 20
SUCCESS = "_SUCCESS"  # written last in a stage's folder: its outputs count once it exists


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def atomic_write(
    path: Path, data: bytes | str | Callable[[BinaryIO], object], fsync: bool = False
) -> None:
    """Write `data` (bytes, text, or a function writing to the open file) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_dir(path: Path) -> str:
    """Content fingerprint of a folder (or a file): every file's relative path and bytes;
    hidden files and the runner's SUCCESS marker are not content."""
    digest = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f.name.startswith(".") or f.name == SUCCESS:
            continue
        digest.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(BLOCK), b""):
                digest.update(block)
    return digest.hexdigest()
