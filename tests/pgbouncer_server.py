"""A real PgBouncer (Debian's ``pgbouncer``) in **transaction mode** in front of the session's
PostgreSQL server, on a free loopback port: what many production deployments put between
their applications and the database.

Like PostgreSQL, PgBouncer refuses to run as root: it runs as the PostgreSQL server's user.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.pg_server import DATABASE, SUPERUSER, PostgresServer
from tests.servers import free_port


def _binary() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if found is None:
        raise RuntimeError("PgBouncer is not installed (scripts/test installs `pgbouncer`)")
    return found


class PgBouncer:
    """``pgbouncer`` with ``pool_mode = transaction`` and a small server pool, so that the
    statements of one client really do run on several server connections."""

    def __init__(self, postgres: PostgresServer, *, pool_size: int = 3) -> None:
        self.postgres = postgres
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="conveyor-pgbouncer-"))
        (self.dir / "users.txt").write_text(f'"{SUPERUSER}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{DATABASE} = host=127.0.0.1 port={postgres.port} dbname={DATABASE}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 400\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
        )
        user = postgres.user
        if user is not None:
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, **params: str) -> str:
        query = "&".join(f"{key}={value}" for key, value in params.items())
        url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"
        return f"{url}?{query}" if query else url

    def start(self, timeout: float = 20.0) -> None:
        user = self.postgres.user
        run_as: dict[str, object] = (
            {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        )
        self.process = subprocess.Popen(
            [_binary(), str(self.dir / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.dir,
            **run_as,  # type: ignore[arg-type]
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.process.returncode}: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)  # waiting for the listening socket
        raise RuntimeError("pgbouncer did not start in time")

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # immediate shutdown
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
