"""A real PostgreSQL server for the tests: initdb'd in a temp folder, started on a free
loopback port, stopped at the end of the session. The binaries come from Debian's
`postgresql` package (`make test` installs it when missing)."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from support import free_port


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    def __init__(self):
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError(
                "PostgreSQL is not installed (`make test` installs Debian's postgresql package)"
            )
        self.dir = Path(tempfile.mkdtemp(prefix="dae-pg-"))
        self.password = secrets.token_urlsafe(12)
        # The server refuses to run as root: as root, run it as Debian's postgres user.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password)
        if self.as_user:
            shutil.chown(self.dir, "postgres")
            shutil.chown(pwfile, "postgres")
        data = self.dir / "data"
        subprocess.run(
            [
                *self.as_user,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "dae",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )
        self.port = free_port()
        self.log = open(self.dir / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                *self.as_user,
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://dae:{self.password}@127.0.0.1:{self.port}/{database}"

    def _connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="dae",
            dbname=database,
            password=self.password,
            autocommit=True,
        )

    def _wait(self, seconds: float = 60) -> None:
        import psycopg

        deadline = time.monotonic() + seconds
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "server.log").read_text()[-2000:])
            try:
                self._connect().close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def create_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"t_{secrets.token_hex(6)}"
        with self._connect() as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        self.proc.terminate()  # SIGTERM: smart shutdown; sessions are closed by then
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
