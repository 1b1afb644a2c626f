"""Destinations for `dae denoise`: they write nothing visible until `commit`. A PNG folder
is built as a temporary sibling and renamed into place, a .npy is written to a temporary
file and os.replace'd; a failed job leaves the previous output as it was.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from dae.files import atomic_write
from dae.serving.batch.sources import SourceError


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


class Destination:
    def __init__(self, path: Path, overwrite: bool):
        self.path, self.overwrite = path, overwrite

    def write(self, name: str, image: np.ndarray) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class PngDestination(Destination):
    """A folder of 8-bit PNGs (L, LA, RGB or RGBA by channel count)."""

    MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}

    def __init__(self, path: Path, overwrite: bool):
        if path.is_symlink():  # the swap happens beside the real folder, not the link
            path = path.resolve()
        super().__init__(path, overwrite)
        if path.exists() and not path.is_dir():
            raise SourceError(f"output {path} exists and is not a folder")
        try:
            held = list(path.iterdir()) if path.is_dir() else []
        except OSError as e:
            raise SourceError(f"cannot read output folder {path}: {e.strerror or e}") from None
        if held and not overwrite:
            raise SourceError(f"output folder {path} is not empty (pass --overwrite to replace it)")
        # --overwrite replaces what an earlier run wrote (PNGs), never a folder of other files.
        other = next((p for p in held if p.suffix.lower() != ".png" or not p.is_file()), None)
        if other is not None:
            raise SourceError(
                f"output folder {path} holds {other.name}, not only PNGs: --overwrite replaces "
                "an earlier output only; write somewhere else"
            )
        self.tmp: Path | None = None

    def check_channels(self, channels) -> None:
        if channels not in self.MODES:
            raise SourceError(f"cannot write {channels}-channel images as PNG: write a .npy")

    def write(self, name: str, image: np.ndarray) -> None:
        from PIL import Image

        pixels = to_uint8(image)
        mode = self.MODES[pixels.shape[-1]]
        try:
            if self.tmp is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.tmp = self.path.parent / f".{self.path.name}.tmp-{uuid.uuid4().hex[:12]}"
                self.tmp.mkdir()
            Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(self.tmp / name)
        except OSError as e:
            raise SourceError(f"cannot write {self.path}: {e.strerror or e}") from None

    def commit(self) -> None:
        if self.tmp is None:
            return
        old = None
        try:
            if self.path.is_dir() and any(self.path.iterdir()):
                old = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:12]}"
                os.rename(self.path, old)
            elif self.path.is_dir():
                self.path.rmdir()
            os.rename(self.tmp, self.path)
        except BaseException as e:  # an error, or Ctrl-C between the two renames
            if old is not None and not self.path.exists():
                os.rename(old, self.path)  # put the previous output back
            if isinstance(e, OSError):
                raise SourceError(f"cannot write {self.path}: {e.strerror or e}") from None
            raise
        self.tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


class NpyDestination(Destination):
    """float32 [N, H, W, C] in [0, 1], the written images in input order."""

    def __init__(self, path: Path, overwrite: bool):
        super().__init__(path, overwrite)
        if path.is_dir():
            raise SourceError(f"output {path} is a folder")
        if path.exists() and not overwrite:
            raise SourceError(f"output {path} exists (pass --overwrite to replace it)")
        self.images: list[np.ndarray] = []

    def check_channels(self, channels) -> None:
        pass

    def write(self, name: str, image: np.ndarray) -> None:
        self.images.append(np.asarray(image, np.float32))

    def commit(self) -> None:
        images = np.stack(self.images)
        try:
            atomic_write(self.path, lambda f: np.save(f, images))
        except OSError as e:
            raise SourceError(f"cannot write {self.path}: {e.strerror or e}") from None

    def abort(self) -> None:
        self.images = []


def open_destination(spec: str, overwrite: bool) -> Destination:
    """A PNG folder (no suffix, a trailing '/' or an existing folder) or a .npy file."""
    path = Path(spec).expanduser()
    if spec.endswith(("/", os.sep)) or path.is_dir() or not path.suffix:
        return PngDestination(path, overwrite)
    if path.suffix.lower() == ".npy":
        return NpyDestination(path, overwrite)
    raise SourceError(
        f"unknown output suffix '{path.suffix}' for {path}: expected a folder (no suffix, or "
        "end it with /) for PNGs, or a .npy file"
    )
