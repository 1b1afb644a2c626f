"""Giving memory back after large requests (README, "Serving": the measurements).

glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MiB),
so after one large request every later request buffer below that size comes from the
arenas, which keep their high-water mark: RSS stayed near its peak. The threshold is
fixed here instead, so buffers of `MMAP_THRESHOLD` or more are mapped and unmapped on
their own. And after a request of at least `min_bytes`, once the burst has settled for
`delay` seconds, the janitor collects the young heap (request buffers left in reference
cycles; the long-lived heap is frozen, see manager._settle_heap, so this is cheap) and
asks malloc to return free pages (malloc_trim), off the event loop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import threading

log = logging.getLogger("dae.serving")

MMAP_THRESHOLD = 4 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 (glibc has both)
        return libc
    except (OSError, AttributeError):  # not glibc: leave the allocator as it is
        return None


class Janitor:
    def __init__(self, min_bytes: int = 1 << 20, delay: float = 0.5):
        self.min_bytes, self.delay = min_bytes, delay
        self._due = threading.Event()
        self._stop = threading.Event()
        self._libc = _libc()
        if self._libc is not None:
            self._libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        self.runs = 0
        self._thread = threading.Thread(target=self._loop, name="janitor", daemon=True)
        self._thread.start()

    def note(self, nbytes: int) -> None:
        if nbytes >= self.min_bytes:
            self._due.set()

    def due(self) -> None:
        """Run soon whatever the size (after a version swap, say)."""
        self._due.set()

    def release(self) -> None:
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)
        self.runs += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._due.wait()
            if self._stop.wait(self.delay):
                return
            self._due.clear()
            try:
                self.release()
            except Exception:  # never take the server down for this
                log.exception("giving memory back failed")

    def stop(self) -> None:
        self._stop.set()
        self._due.set()
        self._thread.join(timeout=5)
