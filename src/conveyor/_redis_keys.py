"""The names of every Redis key Conveyor writes, in one place, so each works on Redis Cluster.

Redis Cluster hashes a key to one of 16384 slots by the part between its first ``{`` and the
next ``}`` (its hash tag) when there is one, and a script or multi-key command may only touch
keys of one slot. So, as BullMQ does, every key of one queue carries the queue's tag,
``{<prefix>:<queue>}``: each broker script touches one queue and so one slot, and different
queues spread over the shards. Keys shared by a prefix carry ``{<prefix>}`` (one slot), and keys
of one task id or kv key carry no tag at all (spread by their whole name).

On a single server the tags change nothing but the names; the same scripts run there, with
two differences made here: one sequence counter for all queues (FIFO within a priority holds
across the queues of a lease) and scripts that push wake-up lists themselves.

Another module that adds keys asks this class for their names: per-queue state that a script
updates with the queue's own keys goes under :meth:`RedisKeys.queue_key` (same slot as the
queue), state of the whole prefix under :meth:`RedisKeys.shared`, and independent keys (one
per id, read alone or by ``mget``) under :meth:`RedisKeys.spread`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    """Key names under ``prefix``; ``cluster`` when the server is a Redis Cluster."""

    prefix: str
    cluster: bool = False

    # -- one queue: all in the queue's slot ------------------------------------------------
    def queue(self, queue: str) -> str:
        """The base name of ``queue``'s keys, ``{<prefix>:<queue>}`` (its hash tag)."""
        return f"{{{self.prefix}:{queue}}}"

    def queue_key(self, queue: str, kind: str) -> str:
        """A key of ``queue`` (``ready``, ``delayed``, ``leased``, ``dead``, ``m``,
        ``msg:<uid>``, or a new kind of another module), in the queue's slot."""
        return f"{self.queue(queue)}:{kind}"

    def seq(self, queue: str) -> str:
        """The counter numbering ``queue``'s messages: shared by all queues on one server,
        the queue's own on Cluster."""
        return self.queue_key(queue, "seq") if self.cluster else self.shared("seq")

    def wake(self, queue: str) -> str:
        """``queue``'s wake-up list. All of them share one slot, so a consumer of several
        queues blocks on all of them with one BLPOP, on Cluster too. (An ingress entry names
        its queue by this list: ``lua/ingress.lua`` makes :meth:`queue` of it.)"""
        return self.shared(f"wake:{queue}")

    # -- one prefix: all in the prefix's slot ----------------------------------------------
    def shared(self, kind: str) -> str:
        """A key of the whole prefix, ``{<prefix>}:<kind>`` (e.g. ``queues``)."""
        return f"{{{self.prefix}}}:{kind}"

    @property
    def queues(self) -> str:
        """The set of known queue names."""
        return self.shared("queues")

    @property
    def ingress(self) -> str:
        """The list small publishes push their messages on, queued by the next script
        (``lua/common.lua``); single server only."""
        return self.shared("in")

    @property
    def unroutable(self) -> str:
        """Where scripts set aside ingress entries that name no queue (the last 1,000)."""
        return self.shared("in:unroutable")

    def stage(self, token: str) -> str:
        """The chunks of one staged bulk publish, waiting for its commit
        (``lua/staging.lua``); single server only."""
        return self.shared(f"stage:{token}")

    def revoked(self, task_id: str = "") -> str:
        """A revocation flag (or, with no id, the prefix of all of them)."""
        return self.shared(f"revoked:{task_id}")

    # -- independent keys --------------------------------------------------------------------
    def spread(self, kind: str, name: str = "") -> str:
        """``<prefix>:<kind>:<name>``, no tag: keys of one id each (results, kv values),
        spread over the shards by their whole name."""
        return f"{self.prefix}:{kind}:{name}"
