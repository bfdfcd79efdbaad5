"""The Streams protocol: bounded, append-only logs in a broker's storage.

Events (:mod:`conveyor.events`) and remote control (:mod:`conveyor.control`: the command
channel and each request's replies) are streams. A broker hands out one implementation over its
own connections as ``broker.streams`` (``memory``, ``sqlite``, ``redis``, ``postgres`` here;
RabbitMQ uses those of its key/value server: ``conveyor.brokers.amqp.streams``). A broker
without one raises :class:`NotImplementedError` from the contract's default, so events and
control report that clearly instead of failing later.

Promises every implementation keeps (tests/conformance/test_streams.py):

* ``append`` adds entries in order, atomically per batch, and trims the stream to its caps:
  at most ``max_length`` entries (oldest dropped first; Redis trims approximately, keeping at
  most a little more) and none older than ``max_age`` seconds.
* Each entry has a *position*, a string that increases along the stream. ``read(after=p)``
  returns the entries after ``p`` in order (``after=None``: from the oldest kept), at most
  ``limit``; ``since=t`` starts at the first entry appended at or after POSIX time ``t``.
  A position that was trimmed away is not an error: reading resumes at the oldest kept entry.
* ``read(..., wait=w)`` waits up to ``w`` seconds for an entry when there is none to return.
* ``last(stream)`` is the position of the newest entry (``read(after=last)`` returns only
  entries appended later), :data:`START` when the stream is empty.
* ``delete(stream)`` removes a stream; streams of different names never see each other's
  entries.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

#: The position before every entry (``read(after=START)`` starts at the oldest).
START = "0"


class Entry(NamedTuple):
    """One stream entry: its position, when it was appended (POSIX time), its bytes."""

    position: str
    time: float
    body: bytes


class Streams(Protocol):
    """Bounded append-only streams, safe to use from several threads."""

    def append(self, stream: str, bodies: list[bytes], *, max_length: int, max_age: float) -> None:
        """Append ``bodies`` in one batch, then trim to the caps."""
        ...

    def read(
        self,
        stream: str,
        after: str | None = None,
        *,
        limit: int = 100,
        wait: float = 0.0,
        since: float | None = None,
    ) -> list[Entry]:
        """Entries after position ``after`` (or from time ``since``), oldest first."""
        ...

    def last(self, stream: str) -> str:
        """The position of the newest entry (:data:`START` if none)."""
        ...

    def delete(self, stream: str) -> None:
        """Remove the stream and its entries."""
        ...


# Helpers of the implementations (the SQL rings of sqlite and postgres pack a batch in one row).
def number_position(after: str | None) -> int:
    """A decimal position (``None``: before the first), or a clear :class:`ValueError`."""
    if after is None:
        return 0
    try:
        return int(after)
    except ValueError:
        raise ValueError(f"not a stream position of this broker: {after!r}") from None


def pack(bodies: list[bytes]) -> bytes:
    """Entries as one blob: each a 4-byte big-endian length, then its bytes."""
    return b"".join(len(body).to_bytes(4, "big") + body for body in bodies)


def unpack(packed: bytes) -> list[bytes]:
    """The entries of a :func:`pack` blob."""
    out: list[bytes] = []
    at = 0
    while at + 4 <= len(packed):
        size = int.from_bytes(packed[at : at + 4], "big")
        out.append(packed[at + 4 : at + 4 + size])
        at += 4 + size
    return out
