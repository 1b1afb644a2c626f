"""One `dae run` per root at a time, across processes and across machines.

A second run on a busy root is refused, not interleaved; `dae stage` processes share a
root (a distributed tuning or training job is several of them) but never with a run. With
SQLite (one machine) the lock is flock on `<root>/.lock`; with a server database (a
cluster, where the root is a network volume and flock cannot be trusted) it is that
database's advisory lock, keyed by the root. Either way the holder's death (SIGKILL, a
lost node) releases it: the kernel closes the file, the server the session.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shlex
import socket
import sys
from pathlib import Path

import sqlalchemy as sa

from dae.component import StageError


class RootBusy(StageError):
    """The root is held by another dae process; trying again later may succeed."""


def _refused(root: Path, holder: str) -> RootBusy:
    return RootBusy(f"{root} is in use by {holder}; wait for it to finish or use another --root")


def _label(what: str) -> str:
    """How a refused process is shown the holder: what it does, its pid, its host and its
    command line (the program's name, not its path)."""
    argv = [os.path.basename(sys.argv[0]), *sys.argv[1:]] if sys.argv else []
    command = shlex.join(argv) if argv and argv[0] else sys.executable
    return f"{what} (pid {os.getpid()} on {socket.gethostname()}: {command})"


@contextlib.contextmanager
def root_lock(root: Path, what: str, shared: bool = False, url: str | None = None):
    """Hold `root` for `what` (a description the refused process is shown)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if url is not None and not url.startswith("sqlite"):
        with _advisory(root, what, shared, url):
            yield
        return
    with _flock(root, what, shared):
        yield


@contextlib.contextmanager
def _flock(root: Path, what: str, shared: bool):
    with open(root / ".lock", "a+") as f:
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another dae process"
            if shared and holder == "another dae process":
                holder = "a dae run"
            raise _refused(root, holder) from None
        if not shared:
            f.truncate(0)
            f.write(_label(what))
            f.flush()
        try:
            yield
        finally:
            if not shared:
                f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


def lock_key(root: Path) -> int:
    """A signed 64-bit advisory lock key for a root (its absolute path, which every Pod
    mounting the volume at the same place shares)."""
    digest = hashlib.sha256(f"dae-root:{Path(root).absolute()}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def _advisory(root: Path, what: str, shared: bool, url: str):
    label = _label(what)
    if len(label.encode()) > 63:  # NAMEDATALEN: the command line is cut
        label = label.encode()[:59].decode(errors="ignore") + "...)"
    engine = sa.create_engine(
        url, poolclass=sa.pool.NullPool, connect_args={"application_name": label}
    )
    key = lock_key(root)
    try:
        with engine.connect() as conn:
            fn = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
            got = conn.execute(sa.text(f"SELECT {fn}(:k)"), {"k": key}).scalar()
            conn.commit()
            if not got:
                raise _refused(root, _holder(conn, key, shared))
            try:
                yield
            finally:
                unlock = "pg_advisory_unlock_shared" if shared else "pg_advisory_unlock"
                with contextlib.suppress(sa.exc.DBAPIError):
                    conn.execute(sa.text(f"SELECT {unlock}(:k)"), {"k": key})
                    conn.commit()
    finally:
        engine.dispose()


def _holder(conn, key: int, shared: bool) -> str:
    """Who holds the key, as its session named itself (application_name)."""
    unsigned = key & (2**64 - 1)
    rows = (
        conn.execute(
            sa.text(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :hi AND l.objid = :lo"
                " AND l.objsubid = 1 AND l.pid <> pg_backend_pid()"
            ),
            {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF},
        )
        .scalars()
        .all()
    )
    names = sorted({r for r in rows if r})
    if names:
        return ", ".join(names)
    return "a dae run" if shared else "another dae process"
