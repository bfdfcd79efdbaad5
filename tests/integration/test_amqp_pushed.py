"""Messages RabbitMQ pushed to a blocking lease (``brokers/amqp/pushed.py``) on the session's
rabbitmq-server: what was pushed but not leased goes back uncharged on close and release, a
forked child never hands out its parent's, a lost connection loses and duplicates nothing,
and pushed messages keep the priority and queue order."""

from __future__ import annotations

import os
import socket
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.amqp import AMQPBroker
from conveyor.brokers.base import Delivery, Message
from conveyor.exceptions import BrokerError
from tests.conftest import wait_until
from tests.rabbit_server import RabbitServer

pytestmark = pytest.mark.amqp

Q = "default"
BrokerMaker = Callable[..., AMQPBroker]


@pytest.fixture
def make_broker(rabbit_server: RabbitServer, tmp_path: Path) -> Iterator[BrokerMaker]:
    prefix = f"push{uuid.uuid4().hex[:8]}"
    made: list[AMQPBroker] = []

    def make(**transport: object) -> AMQPBroker:
        options = BrokerOptions(key_prefix=prefix, transport_options=dict(transport))
        broker = create_broker(f"{rabbit_server.url}?kv_url=sqlite:///{tmp_path}/kv.db", options)
        assert isinstance(broker, AMQPBroker)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


def messages(n: int, queue: str = Q, **fields: object) -> list[Message]:
    return [Message(uuid.uuid4().hex, queue, f"{i}".encode(), **fields) for i in range(n)]  # type: ignore[arg-type]


def buffered(broker: AMQPBroker, queues: list[str]) -> int:
    """How many pushed messages ``broker`` holds unleased (after reading what arrived)."""
    with broker._session.lock:
        broker._session.pump()
        return broker._pushed.buffered(queues)


def with_unleased(broker: AMQPBroker, total: int, unleased: int) -> list[Delivery]:
    """Publish ``total`` messages and lease one while ``unleased`` more wait pushed in
    ``broker``'s buffer (the rest ready in RabbitMQ). Returns the leased one."""
    assert broker.lease([Q], unleased + 1, 0.01) == []  # consuming, a window of unleased + 1
    broker.publish(messages(total))
    held = broker.lease([Q], 1, 5.0)
    assert len(held) == 1
    wait_until(lambda: buffered(broker, [Q]) >= unleased, 10.0, "pushes into the buffer")
    return held


def drain(broker: AMQPBroker, queues: list[str]) -> list[Delivery]:
    out: list[Delivery] = []
    while got := broker.lease(queues, 100, 0):
        broker.ack(got)
        out += got
    return out


def test_pushed_messages_go_back_uncharged_on_close(make_broker: BrokerMaker) -> None:
    worker, other = make_broker(), make_broker()
    held = with_unleased(worker, 10, 3)
    worker.ack(held)
    worker.close()
    rest = drain(other, [Q])
    assert len(rest) == 9
    assert {d.delivery_count for d in rest} == {1}, "a pushed, unleased message was charged"


def test_release_gives_back_the_released_and_the_unleased_uncharged(
    make_broker: BrokerMaker,
) -> None:
    worker, other = make_broker(), make_broker()
    held = with_unleased(worker, 6, 2)
    worker.release(held)
    assert buffered(worker, [Q]) == 0
    rest = drain(other, [Q])
    assert len(rest) == 6
    assert held[0].id in {d.id for d in rest}
    assert {d.delivery_count for d in rest} == {1}


def test_give_back_unleased_returns_what_was_pushed_and_keeps_the_lease(
    make_broker: BrokerMaker,
) -> None:
    # What a worker calls before a task that may kill its process: the pushed messages go
    # back uncharged now (they would come back charged with the dead connection).
    worker, other = make_broker(), make_broker()
    held = with_unleased(worker, 6, 3)
    worker.give_back_unleased()
    assert buffered(worker, [Q]) == 0
    rest = drain(other, [Q])
    assert len(rest) == 5 and held[0].id not in {d.id for d in rest}
    assert {d.delivery_count for d in rest} == {1}
    worker.ack(held)  # its lease is untouched
    worker.publish(messages(2))
    again: list[Delivery] = []
    for _ in range(2):  # the next lease consumes again
        again += worker.lease([Q], 2 - len(again), 5.0)
    assert len(again) == 2


def test_a_forked_child_never_hands_out_its_parents_pushed_messages(
    make_broker: BrokerMaker,
) -> None:
    parent = make_broker()
    held = with_unleased(parent, 4, 3)
    # what the parent holds (leased or pushed) is not ready for anyone else
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads alive
        pid = os.fork()
    if pid == 0:  # child: its own connection, none of the parent's deliveries
        try:
            os.close(read)
            got = parent.lease([Q], 10, 0.3)
            os.write(write, ",".join(d.id for d in got).encode())
            os._exit(0)
        except BaseException:
            os._exit(2)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child_got = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_got == ""
    rest = parent.lease([Q], 10, 5.0)  # the parent still has them, first delivery
    assert len(rest) == 3
    assert {d.delivery_count for d in rest} == {1}
    parent.ack([*held, *rest])
    assert parent.lease([Q], 10, 0) == []


def test_a_lost_connection_loses_and_duplicates_nothing(make_broker: BrokerMaker) -> None:
    worker, other = make_broker(), make_broker()
    held = with_unleased(worker, 5, 3)
    connection = worker._session._connection
    assert connection is not None and connection.sock is not None
    connection.sock.shutdown(socket.SHUT_RDWR)  # the network fails under the client
    with pytest.raises(BrokerError):
        worker.lease([Q], 10, 0.5)
    worker.ack(held)  # a stale receipt: a no-op, not an error
    got: list[Delivery] = []
    wait_until(lambda: got.extend(worker.lease([Q], 10, 0.2)) or len(got) >= 5, 10.0, "requeue")
    worker.ack(got)
    assert sorted(d.id for d in got) == sorted({d.id for d in got}), "a message came twice"
    assert held[0].id in {d.id for d in got}
    assert other.lease([Q], 10, 0) == []


def test_pushed_messages_keep_priorities_on_a_classic_queue(make_broker: BrokerMaker) -> None:
    broker = make_broker(queue_type="classic")
    sent = [Message(uuid.uuid4().hex, Q, b"", priority=p) for p in (0, 9, 5, 9, 1, 7, 3, 8)]
    broker.publish(sent)
    got: list[Delivery] = []
    wait_until(lambda: got.extend(broker.lease([Q], 3, 1.0)) or len(got) >= 8, 10.0, "all")
    assert [d.priority for d in got] == [9, 9, 8, 7, 5, 3, 1, 0]
    assert [d.id for d in got[:2]] == [sent[1].id, sent[3].id]  # FIFO within a priority
    broker.ack(got)


def test_pushed_messages_of_the_first_queue_are_served_first(make_broker: BrokerMaker) -> None:
    broker = make_broker()
    assert broker.lease(["a", "b"], 2, 0.01) == []  # consumers of both, a window of 2 each
    broker.publish(messages(2, "b") + messages(2, "a"))
    wait_until(lambda: buffered(broker, ["b"]) == 2, 10.0, "pushes from b")
    wait_until(lambda: buffered(broker, ["a"]) == 2, 10.0, "pushes from a")
    got = broker.lease(["a", "b"], 1, 5.0)
    got += broker.lease(["a", "b"], 3, 5.0)
    assert [d.queue for d in got] == ["a", "a", "b", "b"], "b's message passed one of a"
    broker.ack(got)


def test_close_waits_for_a_lease_reaper_pass_under_way(
    make_broker: BrokerMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass of the reaper that began before ``close()`` ends before the connection is
    dropped: run after it, the pass would open a new connection that nothing closes."""
    broker = make_broker()
    broker.lease([Q], 1, 0.01)  # starts the reaper
    reaper = broker._reaper
    assert reaper is not None
    in_pass, go = threading.Event(), threading.Event()
    real_pass = reaper._reap

    def held_pass() -> int:
        in_pass.set()
        go.wait(10)
        return real_pass()

    monkeypatch.setattr(reaper, "_reap", held_pass)
    assert in_pass.wait(5)
    closer = threading.Thread(target=broker.close)
    closer.start()
    closer.join(0.5)  # unfixed, close() is done by now and the pass reconnects below
    go.set()
    closer.join(15)
    assert not closer.is_alive()
    assert not reaper.is_alive()
    assert not broker._session.connected


def test_nothing_is_on_its_way_to_a_consumer_whose_window_is_full(
    make_broker: BrokerMaker,
) -> None:
    """Before cancelling its consumers the broker waits for what RabbitMQ pushed (a delivery
    on its way to a cancelled consumer is requeued charged): a consumer holding as many
    unsettled deliveries as its prefetch gets nothing more; one with room gets what its
    queue holds ready."""
    broker = make_broker()
    names = broker.names
    broker.publish(messages(3))
    got = broker.lease([Q], 2, 5.0)  # consumers of Q and its lane, prefetch 2 x 2 each
    assert len(got) == 2
    wait_until(lambda: buffered(broker, [Q]) == 1, 5, "the third message pushed")
    consumed = [names.queue(Q), names.lane(Q)]
    assert broker._unfilled() == consumed  # room for one more in Q, four in its lane
    assert not broker._session.run(lambda ch: broker._ready_in(ch, consumed), "test")

    broker.publish(messages(4))
    wait_until(lambda: buffered(broker, [Q]) == 2, 5, "a fourth message pushed")
    assert broker._unfilled() == [names.lane(Q)]  # 2 leased + 2 pushed: Q's prefetch
    assert broker._session.run(lambda ch: broker._ready_in(ch, [names.queue(Q)]), "test")
    broker.ack(got)
