"""The remote-control protocol: commands, their arguments, requests and replies.

A request is one entry of the broker's ``control`` stream (``broker.streams``; short caps: a
command is for the workers alive now). Every worker process follows that stream and handles
the requests addressed to it (``destination``: worker names; a node name ``host.123`` also
addresses its processes ``host.123/1``, ``host.123/2``, ...). Replies go to the request's own
stream ``reply:<id>``, which the sender reads until its timeout (or until every worker it
expected answered). Commands that act on a whole node - ``shutdown``, ``pool_grow``,
``pool_shrink``, ``autoscale`` - are handled by the node's supervisor (or by a single-process
worker itself); the others by each worker process.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from ..exceptions import ConveyorError
from ..task import rate_per_second

#: The stream requests travel in, and its caps (requests are for the workers alive now).
STREAM: Final = "control"
MAX_LENGTH: Final = 1000
MAX_AGE: Final = 60.0
#: Replies to request ``id`` go to stream ``REPLIES + id``.
REPLIES: Final = "reply:"
REPLY_MAX_AGE: Final = 60.0

type Arguments = dict[str, object]


class ControlError(ConveyorError, ValueError):
    """An unknown command, bad arguments or an unknown worker: nothing was sent."""


@dataclass(frozen=True, slots=True)
class Command:
    """A command's name, whether it inspects or changes, whether a node's supervisor handles
    it (rather than each process), and the check that normalises its arguments."""

    name: str
    kind: str  # "inspect" or "control"
    node: bool
    check: Callable[[Arguments], Arguments]


def _none(arguments: Arguments) -> Arguments:
    return _only(arguments)


def _only(arguments: Arguments, *allowed: str) -> Arguments:
    extra = sorted(set(arguments) - set(allowed))
    if extra:
        expected = ", ".join(allowed) if allowed else "none"
        raise ControlError(f"unexpected argument(s) {', '.join(extra)} (expected: {expected})")
    return dict(arguments)


def _text(arguments: Arguments, key: str) -> str:
    value = arguments.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ControlError(f"{key!r} must be a non-empty string, not {value!r}")
    return value.strip()


def _ids(value: object, key: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise ControlError(f"{key!r} must be a task id or a list of task ids, not {value!r}")
    return list(value)


def _count(value: object, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ControlError(f"{key!r} must be an integer >= {minimum}, not {value!r}")
    return value


def _limit(value: object, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86400 * 7:
        raise ControlError(f"{key!r} must be seconds (> 0, at most a week) or None, not {value!r}")
    return float(value)


def _conf(arguments: Arguments) -> Arguments:
    out = _only(arguments, "with_defaults")
    out["with_defaults"] = bool(out.get("with_defaults", False))
    return out


def _query(arguments: Arguments) -> Arguments:
    out = _only(arguments, "ids")
    out["ids"] = _ids(out.get("ids"), "ids")
    return out


def _revoke(arguments: Arguments) -> Arguments:
    out = _only(arguments, "task_id", "terminate", "signal")
    out["task_id"] = _ids(out.get("task_id"), "task_id")
    out["terminate"] = bool(out.get("terminate", False))
    signal = out.get("signal", "SIGTERM")
    if not isinstance(signal, str) or not signal.upper().lstrip("SIG").isalnum():
        raise ControlError(f"'signal' must be a signal name such as SIGTERM, not {signal!r}")
    out["signal"] = signal
    return out


def _terminate(arguments: Arguments) -> Arguments:
    out = _revoke({**arguments, "terminate": True})
    return out


def _rate_limit(arguments: Arguments) -> Arguments:
    out = _only(arguments, "task_name", "rate_limit")
    out["task_name"] = _text(out, "task_name")
    rate = out.get("rate_limit")
    if rate is not None and rate != "":
        if isinstance(rate, bool) or not isinstance(rate, str | int | float):
            raise ControlError(f"'rate_limit' must be like '10/s', '100/m' or None, not {rate!r}")
        try:
            rate_per_second(str(rate))
        except ValueError as exc:
            raise ControlError(str(exc)) from None
        out["rate_limit"] = str(rate)
    else:
        out["rate_limit"] = None
    return out


def _time_limit(arguments: Arguments) -> Arguments:
    out = _only(arguments, "task_name", "soft", "hard")
    out["task_name"] = _text(out, "task_name")
    soft, hard = _limit(out.get("soft"), "soft"), _limit(out.get("hard"), "hard")
    if soft is not None and hard is not None and soft > hard:
        raise ControlError(f"the soft limit ({soft}s) must not exceed the hard one ({hard}s)")
    out["soft"], out["hard"] = soft, hard
    return out


def _n(arguments: Arguments) -> Arguments:
    out = _only(arguments, "n")
    out["n"] = _count(out.get("n", 1), "n")
    return out


def _autoscale(arguments: Arguments) -> Arguments:
    out = _only(arguments, "max", "min")
    high, low = _count(out.get("max"), "max"), _count(out.get("min", 1), "min")
    if low > high:
        raise ControlError(f"autoscale min ({low}) must not exceed max ({high})")
    out["max"], out["min"] = high, low
    return out


def _queue(arguments: Arguments) -> Arguments:
    out = _only(arguments, "queue")
    out["queue"] = _text(out, "queue")
    return out


def _commands() -> dict[str, Command]:
    table: list[tuple[str, str, bool, Callable[[Arguments], Arguments]]] = [
        ("ping", "inspect", False, _none),
        ("active", "inspect", False, _none),
        ("reserved", "inspect", False, _none),
        ("scheduled", "inspect", False, _none),
        ("revoked", "inspect", False, _none),
        ("registered", "inspect", False, _none),
        ("stats", "inspect", False, _none),
        ("active_queues", "inspect", False, _none),
        ("conf", "inspect", False, _conf),
        ("query_task", "inspect", False, _query),
        ("revoke", "control", False, _revoke),
        ("terminate", "control", False, _terminate),
        ("rate_limit", "control", False, _rate_limit),
        ("time_limit", "control", False, _time_limit),
        ("add_consumer", "control", False, _queue),
        ("cancel_consumer", "control", False, _queue),
        ("pause_queue", "control", False, _queue),
        ("resume_queue", "control", False, _queue),
        ("pool_grow", "control", True, _n),
        ("pool_shrink", "control", True, _n),
        ("autoscale", "control", True, _autoscale),
        ("shutdown", "control", True, _none),
    ]
    return {name: Command(name, kind, node, check) for name, kind, node, check in table}


#: Every command a worker obeys.
COMMANDS: Final[Mapping[str, Command]] = _commands()


def check(command: str, arguments: Mapping[str, object] | None) -> tuple[Command, Arguments]:
    """The command and its normalised arguments; :class:`ControlError` if either is bad."""
    spec = COMMANDS.get(command)
    if spec is None:
        known = ", ".join(sorted(COMMANDS))
        raise ControlError(f"unknown control command {command!r}: expected one of {known}")
    if arguments is not None and not isinstance(arguments, Mapping):
        raise ControlError(f"arguments of {command!r} must be a mapping, not {arguments!r}")
    try:
        return spec, spec.check(dict(arguments or {}))
    except ControlError as exc:
        raise ControlError(f"{command}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Request:
    """One control request as it travels in the stream."""

    id: str
    command: str
    arguments: Arguments
    destination: list[str] | None
    reply: bool

    @classmethod
    def new(
        cls, command: str, arguments: Arguments, destination: list[str] | None, reply: bool
    ) -> Request:
        return cls(uuid.uuid4().hex, command, arguments, destination, reply)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "id": self.id,
                "command": self.command,
                "arguments": self.arguments,
                "destination": self.destination,
                "reply": self.reply,
            }
        ).encode()

    @classmethod
    def decode(cls, body: bytes) -> Request:
        """The request in ``body``; ValueError if it is not a well-formed one."""
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        rid, command, arguments = data.get("id"), data.get("command"), data.get("arguments")
        destination, reply = data.get("destination"), data.get("reply")
        if not isinstance(rid, str) or not isinstance(command, str):
            raise ValueError("no id or command")
        if not isinstance(arguments, dict):
            raise ValueError("arguments are not an object")
        if destination is not None and not (
            isinstance(destination, list) and all(isinstance(d, str) for d in destination)
        ):
            raise ValueError("destination is not a list of names")
        return cls(rid, command, arguments, destination, bool(reply))

    def addresses(self, hostname: str) -> bool:
        """Whether this request is for the worker (process) ``hostname``."""
        if self.destination is None:
            return True
        return hostname in self.destination or node_of(hostname) in self.destination


def node_of(hostname: str) -> str:
    """The node of a worker process (``host.123/2`` -> ``host.123``)."""
    return hostname.partition("/")[0]


def encode_reply(hostname: str, value: object) -> bytes:
    return json.dumps({"hostname": hostname, "reply": value}, default=str).encode()
