"""Calls to a Redis Cluster: :class:`ClusterConnections`, the cluster's counterpart of
:class:`conveyor._redis_calls.Connections`, and :func:`connections`, which picks one for a
client."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, TryAgainError

from ._redis import Client
from ._redis_calls import Calls, Command, Connections, Script


class ClusterConnections:
    """:class:`Connections` for a Redis Cluster: the commands of a call are grouped by the
    node that serves their keys' slot (in the client's slot map), written to every node
    involved, then the replies read - one round trip to each node, in parallel, on
    connections of their own as :class:`Connections` keeps them. A command that met MOVED,
    ASK, TRYAGAIN, CLUSTERDOWN or a lost connection is sent again on its own through the
    cluster client, which follows the redirection, refreshes its slot map and retries (a
    command whose connection was lost may then run twice: at-least-once)."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self._nodes: dict[str, Connections] = {}
        self._lock = threading.Lock()

    def execute(self, calls: Calls) -> list[Any]:
        """As :meth:`Connections.execute`; then the calls of :attr:`Calls.later`."""
        replies = self._execute(calls)
        if calls.later:
            after = Calls()
            for script, command in calls.later:
                after.scripts[len(after.commands)] = script
                after.commands.append(command)
            self._execute(after)
        return replies

    def _node(self, node: Any) -> Connections:
        conns = self._nodes.get(node.name)
        if conns is None:
            with self._lock:
                conns = self._nodes.get(node.name)
                if conns is None:
                    client = self._client.get_redis_connection(node)
                    conns = self._nodes[node.name] = Connections(client)
        return conns

    def _execute(self, calls: Calls) -> list[Any]:
        if not calls.commands:
            return []
        client = self._client
        groups: dict[str, tuple[Connections, list[int]]] = {}
        for index, command in enumerate(calls.commands):
            node = client.get_node_from_key(calls.targets.get(index) or _key_of(command))  # type: ignore[no-untyped-call, unused-ignore]  # unannotated before redis-py 8.2
            group = groups.get(node.name)
            if group is None:
                group = groups[node.name] = (self._node(node), [])
            group[1].append(index)
        replies: list[Any] = [None] * len(calls.commands)
        sent = []
        for conns, indices in groups.values():
            commands = [calls.commands[i] for i in indices]
            try:
                sent.append((conns, indices, conns.send(commands)))
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                for i in indices:
                    replies[i] = exc
        for conns, indices, conn in sent:
            try:
                got = conns.receive(conn, len(indices))
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                got = [exc] * len(indices)
            for i, reply in zip(indices, got, strict=True):
                replies[i] = reply
        for index, reply in enumerate(replies):
            command = calls.commands[index]
            if index in calls.targets:
                if isinstance(reply, Exception):
                    # The node is no longer the key's primary (a failover): nothing confirmed.
                    replies[index] = 0
                continue
            script = calls.scripts.get(index)
            if isinstance(reply, _REROUTE) or (isinstance(reply, NoScriptError) and script):
                reply = replies[index] = self._again(command, script)
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _again(self, command: Command, script: Script | None) -> Any:
        """Send ``command`` through the cluster client (following redirections); a script
        that its node does not know (a new primary, a server restart) is loaded first."""
        try:
            return self._client.execute_command(*command)  # type: ignore[no-untyped-call, unused-ignore]  # unannotated before redis-py 8.2
        except NoScriptError:
            if script is None:
                raise
            script.load()
            return self._client.execute_command(*command)  # type: ignore[no-untyped-call, unused-ignore]  # unannotated before redis-py 8.2

    def call(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script call."""
        calls = Calls()
        calls.script(script, keys, args)
        return self.execute(calls)[0]

    def close(self) -> None:
        """Disconnect the connections made in this process."""
        with self._lock:
            nodes = list(self._nodes.values())
        for conns in nodes:
            conns.close()


#: Replies after which a command is sent again through the cluster client.
_REROUTE = (
    MovedError,
    AskError,
    TryAgainError,
    ClusterDownError,
    redis.ConnectionError,
    redis.TimeoutError,
)


def _key_of(command: Command) -> str:
    """The first key of ``command``: EVALSHA's first declared key, else the first argument."""
    if command[0] == "EVALSHA":
        return str(command[3])
    return str(command[1])


def connections(client: Client) -> Connections | ClusterConnections:
    """The :class:`Connections` (or :class:`ClusterConnections`) of ``client``."""
    if isinstance(client, RedisCluster):
        return ClusterConnections(client)
    return Connections(client)
