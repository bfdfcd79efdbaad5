"""Script calls and pipelines of one Redis server in one round trip: :class:`Calls` (what to
send), :class:`Connections` (a process's connections for them, without the client's per-call
pool checkout), :class:`Stream` (commands written as they are built, replies read at the
end) and :class:`Script` (EVALSHA, loaded again after NOSCRIPT). A Redis Cluster's go through
``conveyor._redis_cluster.ClusterConnections``."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from ._redis import Client

#: A Redis command with its arguments, e.g. ``("SET", key, value)``.
Command = tuple[Any, ...]


class Script:
    """A Lua script, called by its SHA1 (EVALSHA) and loaded again after NOSCRIPT (a server
    restart or ``SCRIPT FLUSH``)."""

    def __init__(self, client: Client, source: str) -> None:
        self._client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()
        #: Whether this process loaded it or saw a stream of its calls run (the server may
        #: have lost it since: a restart). A :class:`Stream` of calls to a script not known
        #: loaded loads it first, so its calls do not all meet NOSCRIPT and run again.
        self.loaded = False

    def command(self, keys: Sequence[str], args: Sequence[Any]) -> Command:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def load_command(self) -> Command:
        return ("SCRIPT", "LOAD", self.source)

    def load(self) -> None:
        """Load the script (on every primary of a cluster)."""
        self._client.script_load(self.source)
        self.loaded = True


class Calls:
    """Commands and script calls to send in one round trip (:meth:`Connections.execute`)."""

    __slots__ = ("commands", "hidden", "later", "reads", "scripts", "targets")

    def __init__(self) -> None:
        self.commands: list[Command] = []
        #: Script calls sent once the others are done (on Cluster they may go to other nodes,
        #: e.g. a wake-up after a publish); their replies are not returned.
        self.later: list[tuple[Script, Command]] = []
        self.scripts: dict[int, Script] = {}
        #: Commands without keys that go to the node of a key on Cluster (index -> key), e.g.
        #: WAIT after a publish; on one server they go with the rest. On Cluster one that
        #: fails (its node is no longer the key's primary) replies 0: nothing confirmed.
        self.targets: dict[int, str] = {}
        #: How many replies at the end are not returned (the later calls, once appended).
        self.hidden = 0
        #: The commands after a script call read what it wrote, and running them again is
        #: harmless: after a NOSCRIPT the whole batch is sent again, not the script alone.
        self.reads = False

    def add(self, commands: Iterable[Command]) -> None:
        self.commands.extend(commands)

    def script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> None:
        """A call of ``script`` on ``keys`` (all in one slot on Cluster: the call runs on
        their node) with ``args``."""
        self.scripts[len(self.commands)] = script
        self.commands.append(script.command(keys, args))

    def script_later(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> None:
        """A script call sent after the others have run (:attr:`later`)."""
        self.later.append((script, script.command(keys, args)))

    def __len__(self) -> int:
        return len(self.commands)


class Connections:
    """Connections of one process for the calls a worker makes for every task (scripts and
    small pipelines): a call packs its commands into one write and reads their replies, without
    the client's per-call pool checkout (a ``getpid`` and a readiness poll each way), locks and
    wrappers - about half of a round trip's CPU time on the client.

    Connections are made with the client pool's settings, reused by any thread (one at a time)
    and kept until :meth:`close`; a forked child makes its own and never touches its parent's.
    Connection errors are retried as the client's retry policy says (the command may then run
    twice: at-least-once, as with the client); any failure during a call disconnects its
    connection, so a late reply is never read by the next call.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        # redis-py's send_packed_command connects without asking the sentinels (its own pool
        # checkout connects first), so connections of a Sentinel pool are connected here.
        self._connect_first = isinstance(self._pool, SentinelConnectionPool)
        self._retry: Retry = client.get_retry() or Retry(NoBackoff(), 0)
        self._pid = os.getpid()
        self._idle: list[Any] = []
        self._made: list[Any] = []
        self._lock = threading.Lock()

    def _take(self) -> Any:
        pid = os.getpid()
        if pid != self._pid:  # forked: the parent's connections are not ours to use
            self._pid, self._idle, self._made = pid, [], []
            self._lock = threading.Lock()
        try:
            return self._idle.pop()
        except IndexError:
            pass
        conn = self._pool.make_connection()
        with self._lock:
            self._made.append(conn)
        return conn

    def _exchange(self, commands: Sequence[Command]) -> list[Any]:
        conn = self._take()
        try:
            return self._retry.call_with_retry(
                partial(_exchange, conn, commands, self._connect_first),
                lambda error: conn.disconnect(),
            )
        except BaseException:
            conn.disconnect()  # it reconnects on its next use
            raise
        finally:
            self._idle.append(conn)

    def send(self, commands: Sequence[Command], conn: Any = None) -> Any:
        """Write ``commands`` on a connection (no retry) and return it for :meth:`receive`:
        ``conn``, one that :meth:`send` returned and nobody read yet, or a free one."""
        if conn is None:
            conn = self._take()
        try:
            if self._connect_first:
                conn.connect()
            conn.send_packed_command(packed(conn, commands))
        except BaseException:
            self.drop(conn)
            raise
        return conn

    def drop(self, conn: Any) -> None:
        """Disconnect ``conn`` (owing replies, or broken) and make it free again: it
        reconnects on its next use."""
        conn.disconnect()
        self._idle.append(conn)

    def receive(self, conn: Any, count: int) -> list[Any]:
        """Read the ``count`` replies of :meth:`send` (error replies as values)."""
        try:
            return _replies(conn, count)
        except BaseException:
            conn.disconnect()  # it reconnects on its next use
            raise
        finally:
            self._idle.append(conn)

    def execute(self, calls: Calls) -> list[Any]:
        """Send ``calls`` in one round trip and return their replies. A script call that met
        NOSCRIPT is loaded and run again on its own; then the first error reply is raised."""
        if calls.later:  # one connection: its commands run in order anyway
            calls = _with_later(calls)
        if not calls.commands:
            return []
        return self._settled(calls, self._exchange(calls.commands))

    def _settled(self, calls: Calls, replies: list[Any]) -> list[Any]:
        """The replies of ``calls`` once the script calls that met NOSCRIPT ran again (all
        in one round trip, in order); the first error reply raised."""
        missing: list[int] = []
        failed = False
        for index, reply in enumerate(replies):
            if isinstance(reply, Exception):
                if isinstance(reply, NoScriptError) and index in calls.scripts:
                    missing.append(index)
                else:
                    failed = True
        if missing:
            for script in {
                calls.scripts[index].sha: calls.scripts[index] for index in missing
            }.values():
                script.load()
            if calls.reads:
                calls.reads = False  # once; then as any batch
                return self._settled(calls, self._exchange(calls.commands))
            again = self._exchange([calls.commands[index] for index in missing])
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
            failed = True  # looked for below: a call run again may have failed otherwise
        if failed:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies[: len(replies) - calls.hidden]

    def stream(self, calls: Calls) -> Stream:
        """A :class:`Stream` of ``calls`` (no later calls): the commands added to it are
        sent as they come, so the server runs the first while the caller builds the next."""
        assert not calls.later
        return Stream(self, calls)

    def call(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script call (one round trip)."""
        calls = Calls()
        calls.script(script, keys, args)
        return self.execute(calls)[0]

    def close(self) -> None:
        """Disconnect every connection made in this process (they reconnect if used again)."""
        if self._pid != os.getpid():
            return
        with self._lock:
            made = list(self._made)
        for conn in made:
            conn.disconnect()


class Stream:
    """Commands of one :class:`Calls` written to one connection as the caller adds them
    (:meth:`send`), their replies read at the end (:meth:`finish`): what
    :meth:`Connections.execute` returns for them, with the server's work overlapping the
    caller's. A connection error on the way sends them all again through ``execute`` (and its
    retries), so every command must be safe to run twice, as there."""

    def __init__(self, connections: Connections, calls: Calls) -> None:
        self._connections = connections
        self._calls = calls
        self._conn: Any = None  # holding the replies of the first _sent commands
        self._sent = 0
        self._broken = False

    def send(self) -> None:
        """Write the commands added since the last call."""
        commands = self._calls.commands
        if self._broken or self._sent == len(commands):
            return
        try:
            self._conn = self._connections.send(commands[self._sent :], self._conn)
        except redis.ConnectionError:  # dropped by send(); finish() sends everything again
            self._conn, self._broken = None, True
            return
        except BaseException:
            self._conn = None
            raise
        self._sent = len(commands)

    def finish(self) -> list[Any]:
        """Send the rest, read every reply; as :meth:`Connections.execute`."""
        self.send()
        calls, connections = self._calls, self._connections
        conn, self._conn = self._conn, None
        if self._broken or conn is None:
            return connections.execute(calls)
        try:
            replies = connections.receive(conn, self._sent)
        except redis.ConnectionError:  # dropped by receive()
            return connections.execute(calls)
        return connections._settled(calls, replies)

    def abort(self) -> None:
        """Give up (the caller failed while adding): drop the connection with whatever
        replies it still owes. What was sent may have run, as with any interrupted call."""
        if self._conn is not None:
            self._connections.drop(self._conn)
            self._conn = None


def _with_later(calls: Calls) -> Calls:
    """``calls`` with its later calls appended (their replies hidden)."""
    joined = Calls()
    joined.commands = list(calls.commands)
    joined.scripts = dict(calls.scripts)
    joined.targets = dict(calls.targets)
    joined.reads = calls.reads
    for script, command in calls.later:
        joined.scripts[len(joined.commands)] = script
        joined.commands.append(command)
    joined.hidden = len(calls.later)
    return joined


def packed(conn: Any, commands: Sequence[Command]) -> list[bytes]:
    """``commands`` in RESP, as ``conn`` would pack them (chunks for its
    ``send_packed_command``): hiredis does it in C, a sixth of the time redis-py's serializer
    takes for a publish's arguments (the same bytes: str as UTF-8, numbers as ``repr``)."""
    try:
        return [b"".join([hiredis.pack_command(command) for command in commands])]
    except TypeError:  # a type hiredis does not take: redis-py encodes it or says why not
        return list(conn.pack_commands(commands))


def _exchange(conn: Any, commands: Sequence[Command], connect_first: bool) -> list[Any]:
    if connect_first:
        conn.connect()
    conn.send_packed_command(packed(conn, commands))
    return _replies(conn, len(commands))


def _replies(conn: Any, count: int) -> list[Any]:
    """The next ``count`` replies on ``conn``, error replies as values (read in full: the
    connection stays in step)."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(conn.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies
