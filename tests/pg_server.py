"""A real PostgreSQL server for tests: ``initdb`` into a temporary directory, ``postgres`` on a
free loopback port, owned by the test run (started once per session by the fixtures).

PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` system user
(Debian's package creates it), or as a ``conveyor-pg`` system user created on first use.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import free_port

#: The superuser of the test cluster (trust authentication on loopback).
SUPERUSER = "postgres"
DATABASE = "conveyor"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL is not installed (scripts/test installs `postgresql`)")
    return Path(initdb).parent


def _version_key(path: str) -> int:
    try:
        return int(Path(path).parts[-3])
    except ValueError:
        return 0


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "conveyor-pg"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "conveyor-pg"],
        check=True,
    )
    return pwd.getpwnam("conveyor-pg")


class PostgresServer:
    """A PostgreSQL cluster on 127.0.0.1. ``restart()`` keeps the port and the data."""

    def __init__(self, *, durable: bool = False) -> None:
        #: fsync on (benchmarks); tests run without it (a restart keeps data either way).
        self.durable = durable
        self.bin = _bin_dir()
        self.port = free_port()
        self.user = _server_user()
        self.dir = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
        self.data = self.dir / "data"
        self.sockets = self.dir / "sockets"
        self.sockets.mkdir()
        if self.user is not None:
            for path in (self.dir, self.sockets):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        self.process: subprocess.Popen[bytes] | None = None
        self._initdb()

    def url(self, database: str = DATABASE, user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def _run_as(self) -> dict[str, object]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.dir,
            **self._run_as(),  # type: ignore[arg-type]
        )

    def start(self, timeout: float = 30.0) -> None:
        args = [
            str(self.bin / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-k",
            str(self.sockets),
            "-c",
            "listen_addresses=127.0.0.1",
            *(() if self.durable else ("-c", "fsync=off", "-c", "full_page_writes=off")),
            "-c",
            "max_connections=300",
            "-c",
            "shared_buffers=64MB",
        ]
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.dir,
            **self._run_as(),  # type: ignore[arg-type]
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}")
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
                check=False,
            )
            if ready.returncode == 0:
                self._ensure_database()
                return
            time.sleep(0.05)  # waiting for the server socket to open
        raise RuntimeError("postgres did not start in time")

    def _ensure_database(self) -> None:
        self.sql(
            f"SELECT 'exists' FROM pg_database WHERE datname = '{DATABASE}'",
            database="postgres",
        ) or self.sql(f"CREATE DATABASE {DATABASE}", database="postgres")

    def sql(self, statement: str, database: str = DATABASE) -> str:
        """Run one statement as the superuser (psql); return its output without headers."""
        done = subprocess.run(
            [
                str(self.bin / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                statement,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip()

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown: clients are disconnected, committed data is kept."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started PostgresServer for the ``with`` block; stopped and removed after."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
