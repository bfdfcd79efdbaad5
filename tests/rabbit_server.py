"""A rabbitmq-server owned by the test run: free loopback ports, its own node name and data.

Debian's ``rabbitmq-server`` (3.10 here) is started straight from its ``sbin`` script (the
``/usr/sbin`` wrapper would switch to the ``rabbitmq`` user and the system data dir) with:

* its own node name (``conveyor-test-<random>@localhost``) and a HOME of its own (the Erlang
  cookie lives there), so it never meets the system node or another test run;
* AMQP (plain and TLS), distribution and epmd ports all free loopback ports (``RABBITMQ_NODE_PORT``,
  ``RABBITMQ_DIST_PORT``, ``ERL_EPMD_PORT``), listening on 127.0.0.1 only;
* ``RABBITMQ_MNESIA_BASE`` / ``RABBITMQ_LOG_BASE`` / config in a temporary directory, no plugins
  (management off), ``guest`` allowed from loopback as by default.

``RUNNING_UNDER_SYSTEMD`` makes the script ``exec`` the Erlang VM, so the PID we hold is the
node's: ``stop()`` sends it SIGTERM (a clean shutdown), ``kill()`` SIGKILL. ``cleanup()`` also
stops the epmd daemon the node started on its private port.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.certs import self_signed
from tests.servers import free_port

SBIN_GLOB = "/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"


def find_rabbitmq_server() -> str | None:
    """The ``sbin/rabbitmq-server`` script of Debian's package (None if not installed)."""
    found = sorted(Path("/").glob(SBIN_GLOB.lstrip("/")))
    if found:
        return str(found[-1])
    return None


def _epmd() -> str | None:
    for candidate in sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd")):
        return str(candidate)
    return shutil.which("epmd")


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL the node if the test run dies without cleaning up
    (Linux ``PR_SET_PDEATHSIG``), so no node outlives a killed pytest."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class RabbitServer:
    """A rabbitmq-server node on 127.0.0.1. ``restart()`` keeps ports, node name and data."""

    def __init__(self) -> None:
        script = find_rabbitmq_server()
        if script is None:
            raise RuntimeError("rabbitmq-server is not installed (scripts/test installs it)")
        self.script = script
        self.port = free_port()
        self.tls_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"conveyor-test-{uuid.uuid4().hex[:8]}@localhost"
        self.dir = Path(tempfile.mkdtemp(prefix="conveyor-rabbit-"))
        (self.dir / "home").mkdir()
        #: The TLS listener's certificate (self-signed: clients trust it with ?cafile=).
        self.cert, key = self_signed(self.dir)
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"listeners.ssl.1 = 127.0.0.1:{self.tls_port}\n"
            f"ssl_options.cacertfile = {self.cert}\n"
            f"ssl_options.certfile = {self.cert}\n"
            f"ssl_options.keyfile = {key}\n"
            "ssl_options.verify = verify_none\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = warning\n"
            # The suite's node shares a busy 2-core machine: no disk or memory alarms.
            "disk_free_limit.absolute = 1MB\n"
            "vm_memory_high_watermark.relative = 0.8\n"
        )
        (self.dir / "enabled_plugins").write_text("[].\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def tls_url(self) -> str:
        """``amqps://`` to the TLS listener, trusting its certificate."""
        return f"amqps://guest:guest@127.0.0.1:{self.tls_port}//?cafile={self.cert}"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            HOME=str(self.dir / "home"),
            RUNNING_UNDER_SYSTEMD="1",
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.dir / "advanced.config"),
            RABBITMQ_PID_FILE=str(self.dir / "rabbit.pid"),
        )
        return env

    def start(self, timeout: float = 60.0) -> None:
        log = (self.dir / "stdout.log").open("ab")
        self.process = subprocess.Popen(
            [self.script],
            env=self._env(),
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"rabbitmq-server exited with {self.process.returncode}: {self.log_tail()}"
                )
            if self._accepts_login():
                return
            time.sleep(0.1)  # waiting for the node to boot
        self.kill()
        raise RuntimeError(f"rabbitmq-server did not start in {timeout:.0f}s: {self.log_tail()}")

    def _accepts_login(self) -> bool:
        import amqp  # deferred: the optional AMQP client

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                pass
        except OSError:
            return False
        connection = amqp.Connection(
            f"127.0.0.1:{self.port}", userid="guest", password="guest", connect_timeout=2
        )
        try:
            connection.connect()
        except Exception:  # booting: refused, reset or not yet accepting logins
            return False
        with contextlib.suppress(Exception):
            connection.close()
        return True

    def log_tail(self, chars: int = 2000) -> str:
        parts = []
        for path in [self.dir / "stdout.log", *sorted((self.dir / "log").glob("*.log"))]:
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace")[-chars:])
        return "\n".join(parts)

    def stop(self, timeout: float = 60.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        epmd = _epmd()
        if epmd is not None:
            subprocess.run(
                [epmd, "-port", str(self.epmd_port), "-kill"],
                env={**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
                check=False,
            )
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def rabbit_server() -> Iterator[RabbitServer]:
    """One rabbitmq-server for the whole test session, started on first use (about 5-10 s)."""
    server = RabbitServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
