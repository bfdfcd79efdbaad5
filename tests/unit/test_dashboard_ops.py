"""The dashboard's operations pages (Workers, Queues, Scheduled, Retries, Periodic) and their
actions, through HTTP (Starlette's test client) on a SQLite broker, with an in-process worker
where one is needed. The browser tests are in tests/e2e/test_dashboard_ops.py."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conveyor import Conveyor
from conveyor.beat import Beat, every
from conveyor.beat.switches import read_switches
from conveyor.brokers.base import Message
from conveyor.dashboard import create_dashboard
from conveyor.dashboard import fleet as fleet_module
from conveyor.message import Envelope, encode_envelope
from conveyor.testing import TestWorker
from tests.conftest import wait_until
from tests.rabbit_server import RabbitServer


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Conveyor]:
    # A short lease: workers beat (and announce themselves) often.
    app = Conveyor("shop", broker=f"sqlite:///{tmp_path}/broker.db", broker_lease_timeout=3.0)

    @app.task(name="shop.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="shop.login")
    def login(user: str, password: str) -> str:
        return user

    app.conf.beat_schedule = {
        "adder": {"task": "shop.add", "schedule": every(60), "args": (1, 2)},
        "off": {"task": "shop.add", "schedule": every(30), "args": (3, 4), "enabled": False},
        "broken": {"task": "shop.add", "schedule": every(30)},  # no arguments: refused
    }
    yield app
    app.close()


@pytest.fixture
def client(app: Conveyor) -> TestClient:
    return TestClient(create_dashboard(app))


def token_of(html: str) -> str:
    match = re.search(r'name="token" value="([^"]+)"', html)
    assert match, "the page has an action form"
    return match.group(1)


def act(client: TestClient, page: str, action: str, data: dict[str, object]) -> tuple[int, str]:
    """POST ``action`` with a fresh token from ``page``; the status and the page shown next."""
    token = token_of(client.get(page).text)
    answer = client.post(f"/actions/{action}", data={"token": token, **data})
    return answer.status_code, answer.text


def audit(app: Conveyor) -> list[tuple[str, str, int]]:
    from conveyor.dashboard.audit import AuditLog

    return [(e.action, e.target, e.count) for e in AuditLog(lambda: app.kv).entries()]


def delayed(
    app: Conveyor, task: str = "shop.add", countdown: float = 600, **options: object
) -> str:
    kwargs = options.pop("kwargs", None)
    args = options.pop("args", (1, 2))
    return app.send_task(task, args, kwargs, countdown=countdown, **options).id  # type: ignore[arg-type]


# -- queues --------------------------------------------------------------------------------
def test_queues_page_counts_per_priority_and_pauses_durably(
    app: Conveyor, client: TestClient
) -> None:
    for priority in (9, 9, 2):
        app.send_task("shop.add", (1, 1), priority=priority)
    app.send_task("shop.add", (1, 1), queue="emails")
    app.send_task("shop.add", (1, 1), priority=4, countdown=600)
    page = client.get("/queues").text
    split = re.sub(r"\s+", " ", page.partition('data-queue="default"')[2].partition("</table>")[0])
    row = '<tr data-priority="{0}"><th><span class="priority">p{0}</span></th>'
    one, zero = '<td class="num">{}</td>', '<td class="num zero">0</td>'
    assert row.format(9) + one.format(2) in split  # ready
    assert row.format(4) + zero + one.format(1) in split  # delayed
    assert 'data-priority="2"' in split and "data-unsplit" not in page
    assert 'data-confirm="Delete the 4 waiting message(s) of queue default?"' in page

    status, shown = act(client, "/queues", "pause-queue", {"queue": "emails"})
    assert status == 200
    assert app.control.paused_queues() == ["emails"]
    assert re.search(r'data-queue="emails" class="paused"', shown)
    # A selection: both (emails is already paused: only default changes).
    act(client, "/queues", "pause-queue", {"id": ["default", "emails"]})
    assert app.control.paused_queues() == ["default", "emails"]
    act(client, "/queues", "resume-queue", {"id": ["default", "emails"]})
    assert app.control.paused_queues() == []
    assert audit(app)[:3] == [
        ("resume-queue", "queues default, emails", 2),
        ("pause-queue", "queues default, emails", 1),
        ("pause-queue", "queues emails", 1),
    ]
    assert "Recent actions" in client.get("/queues").text


def test_a_paused_queue_is_not_leased_from_by_a_worker(app: Conveyor, client: TestClient) -> None:
    act(client, "/queues", "pause-queue", {"queue": "default"})
    result = app.send_task("shop.add", (2, 3))
    with TestWorker(app, hostname="w") as worker:
        wait_until(lambda: "w" in app.control.workers(), 5, "the worker announces itself")
        # A worker reads the pause flags before it consumes: it never leased the task.
        assert app.broker.stats(["default"])["default"].ready == 1
        assert not worker.stopped
        act(client, "/queues", "resume-queue", {"queue": "default"})
        assert result.get(timeout=10) == 5


def test_slow_counts_are_served_with_their_age_and_recounted_in_the_background(
    app: Conveyor, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counts that take SLOW_COUNT or longer (a million messages) are made off the request
    path once there are some: a page shows the last ones with their age while a background
    thread counts again; after an action the next page counts afresh."""
    monkeypatch.setattr(fleet_module, "SLOW_COUNT", 0.0)  # every count is slow
    app.send_task("shop.add", (1, 1))

    def ready(page: str) -> str:
        return page.partition('data-queue="default"')[2].split('<td class="num">')[1]

    first = client.get("/queues").text
    assert ready(first).startswith("1<") and "data-counted-ago" in first
    app.send_task("shop.add", (1, 1))
    assert ready(client.get("/queues").text).startswith("1<")  # shared, not counted again
    # Shared for 4x as long as the count took (~ms); then served while a thread recounts.
    wait_until(lambda: ready(client.get("/queues").text).startswith("2<"), 5, "a recount")
    status, shown = act(client, "/queues", "purge-queue", {"queue": "default"})
    assert status == 200 and ready(shown).startswith("0<")  # counted afresh after an action


def test_purge_queue_is_audited(app: Conveyor, client: TestClient) -> None:
    app.send_task("shop.add", (1, 1), queue="emails")
    delayed(app, queue="emails")
    status, _ = act(client, "/queues", "purge-queue", {"queue": "emails"})
    assert status == 200
    assert app.broker.stats(["emails"])["emails"].ready == 0
    assert audit(app)[0] == ("purge-queue", "queue emails", 2)


# -- scheduled and retries -----------------------------------------------------------------
def test_scheduled_page_lists_delayed_messages_with_secrets_redacted(
    app: Conveyor, client: TestClient
) -> None:
    first = delayed(app, countdown=300)
    secret = delayed(
        app, "shop.login", countdown=900, args=("ann",), kwargs={"password": "hunter22"}
    )
    app.send_task("shop.add", (5, 5))  # ready: not listed
    page = client.get("/scheduled").text
    assert page.index(first) < page.index(secret)
    assert "shop.add(1, 2)" in page
    assert "shop.login(&#34;ann&#34;, password=&#34;[redacted]&#34;)" in page
    assert "hunter22" not in page
    assert '<span data-figure="scheduled-count">2</span>' in page
    narrowed = client.get("/scheduled?task=login").text
    assert secret in narrowed and first not in narrowed
    assert client.get("/scheduled?search=" + "x" * 201).status_code == 400


def test_run_now_and_cancel_a_selection_or_everything_matching(
    app: Conveyor, client: TestClient
) -> None:
    soon, later = delayed(app), delayed(app, "shop.login", args=("a", "b"))
    delayed(app, queue="emails")
    status, _ = act(client, "/scheduled", "run-scheduled", {"id": [soon]})
    assert status == 200
    ready = app.broker.lease(["default"], 10, 0)
    assert [d.id for d in ready] == [soon]
    app.broker.ack(ready)

    status, shown = act(
        client, "/scheduled", "cancel-scheduled", {"scope": "matching", "queue": "emails"}
    )
    assert status == 200 and "No delayed messages match this filter." in shown
    assert [s.id for s in app.broker.scheduled()] == [later]
    assert audit(app)[:2] == [
        ("cancel-scheduled", "delayed messages matching queue=emails", 1),
        ("run-scheduled", f"delayed messages {soon}", 1),
    ]
    status, _ = act(client, "/scheduled", "run-scheduled", {})
    assert status == 400  # nothing selected: refused, nothing audited
    assert len(audit(app)) == 2


def test_retries_page_shows_only_messages_waiting_for_a_retry(
    app: Conveyor, client: TestClient
) -> None:
    plain = delayed(app)
    body = encode_envelope(Envelope(id="retried-1", task="shop.add", args=[1, 2], retries=2))
    app.broker.publish([Message("retried-1", "default", body, countdown=120)])
    page = client.get("/retries").text
    assert 'data-scheduled="retried-1"' in page and plain not in page
    assert "in 1m" in page or "in 2m" in page
    act(client, "/retries", "run-retries", {"scope": "matching"})
    assert [s.id for s in app.broker.scheduled()] == [plain]
    assert audit(app)[0] == ("run-retries", "retries matching all", 1)


# -- periodic ------------------------------------------------------------------------------
def test_periodic_page_switches_entries_for_every_beat(app: Conveyor, client: TestClient) -> None:
    page = client.get("/periodic").text
    assert 'data-periodic="adder"' in page and "shop.add(1, 2)" in page
    assert "missing a required argument: &#39;x&#39;" in page  # "broken", as beat says
    assert "every 60 seconds" in page or "every minute" in page
    del app.conf.beat_schedule["broken"]
    beat = Beat(app)
    beat.tick()
    assert "adder" in beat._states and "off" not in beat._states

    act(client, "/periodic", "disable-periodic", {"name": "adder"})
    assert read_switches(app.kv) == {"adder": False}
    beat.tick()
    assert "adder" not in beat._states
    act(client, "/periodic", "enable-periodic", {"name": "off"})
    act(client, "/periodic", "enable-periodic", {"name": "adder"})
    assert read_switches(app.kv) == {"off": True}  # adder is back to its code's own setting
    beat.tick()
    assert {"adder", "off"} <= set(beat._states)
    shown = client.get("/periodic").text
    assert "(switched here)" in shown
    assert audit(app)[:3] == [
        ("enable-periodic", "periodic task adder", 1),
        ("enable-periodic", "periodic task off", 1),
        ("disable-periodic", "periodic task adder", 1),
    ]


def test_periodic_run_now_sends_the_task(app: Conveyor, client: TestClient) -> None:
    status, _ = act(client, "/periodic", "run-periodic", {"name": "adder"})
    assert status == 200
    (delivery,) = app.broker.lease(["default"], 5, 0)
    action, target, count = audit(app)[0]
    assert (action, count) == ("run-periodic", 1) and delivery.id in target
    status, shown = act(client, "/periodic", "run-periodic", {"name": "nope"})
    assert status == 404 and "no periodic task named" in shown


# -- workers -------------------------------------------------------------------------------
def test_workers_page_and_remote_control_of_a_worker(app: Conveyor, client: TestClient) -> None:
    started = threading.Event()
    release = threading.Event()

    @app.task(name="shop.slow")
    def slow() -> None:
        started.set()
        release.wait(20)

    with TestWorker(app, hostname="w1", queues=["default"]) as worker:
        wait_until(lambda: "w1" in app.control.workers(), 5, "the worker announces itself")
        result = app.send_task("shop.slow")
        assert started.wait(10)
        wait_until(lambda: result.id in client.get("/workers").text, 10, "the running task")
        page = client.get("/workers").text
        assert 'data-worker="w1"' in page and 'option value="w1"' in page

        status, _ = act(client, "/workers", "add-consumer", {"worker": "w1", "queue": "emails"})
        assert status == 200 and "emails" in worker.queues
        status, _ = act(client, "/workers", "cancel-consumer", {"worker": "w1", "queue": "emails"})
        assert status == 200 and worker.queues == ["default"]
        status, shown = act(client, "/workers", "pool-grow", {"worker": "w1", "n": "1"})
        assert status == 409 and "no pool to resize" in shown
        status, shown = act(client, "/workers", "shutdown-worker", {"worker": "gone"})
        assert status == 404 and "no live worker named &#39;gone&#39;" in shown
        release.set()
        assert result.get(timeout=10) is None
        status, _ = act(client, "/workers", "shutdown-worker", {"worker": "w1"})
        assert status == 200
        wait_until(lambda: worker.stopped, 10, "the remote shutdown")
        # ... and its stop thread is done with the broker before the app closes.
        wait_until(lambda: not _stopping(), 10, "the stop thread ends")
    targets = [(a, t, c) for a, t, c in audit(app)]
    assert targets[0][0] == "shutdown-worker" and "w1: shutting down" in targets[0][1]
    assert targets[1][:2] == (
        "cancel-consumer",
        "worker w1 cancel_consumer queue=emails (w1: no longer consuming from emails)",
    )
    assert targets[2][0] == "add-consumer" and targets[2][2] == 1
    assert len(targets) == 3  # refused actions are not audited


def test_worker_announcement_counts_failures_and_lists_running_tasks(app: Conveyor) -> None:
    @app.task(name="shop.boom")
    def boom() -> None:
        raise RuntimeError("boom")

    with TestWorker(app, hostname="w2") as worker:
        app.send_task("shop.boom")
        app.send_task("shop.add", (1, 2))
        worker.run_until_idle(propagate=False)

        def announced() -> dict[str, object] | None:
            info = app.control.workers().get("w2", {})
            return info if info.get("processed") == 2 else None

        info = wait_until(announced, 10, "the announcement")
        assert info["failed"] == 1 and info["active"] == [] and isinstance(info["load"], float)


def _stopping() -> bool:
    return any(t.name == "conveyor-remote-stop" for t in threading.enumerate())


# -- refusals ------------------------------------------------------------------------------
def test_forged_and_replayed_action_requests_change_nothing(
    app: Conveyor, client: TestClient
) -> None:
    answer = client.post("/actions/pause-queue", data={"token": "forged.sig", "queue": "default"})
    assert answer.status_code == 403
    token = token_of(client.get("/queues").text)
    assert (
        client.post("/actions/pause-queue", data={"token": token, "queue": "a"}).status_code == 200
    )
    replayed = client.post("/actions/pause-queue", data={"token": token, "queue": "b"})
    assert replayed.status_code == 403
    # A token taken by another browser (another session cookie) is refused too.
    other = TestClient(create_dashboard(app))
    stolen = token_of(other.get("/periodic").text)
    assert (
        client.post(
            "/actions/disable-periodic", data={"token": stolen, "name": "adder"}
        ).status_code
        == 403
    )
    assert app.control.paused_queues() == ["a"]
    assert read_switches(app.kv) == {}
    assert [a for a, _, _ in audit(app)] == ["pause-queue"]


def test_read_only_hides_and_refuses_every_operation(app: Conveyor) -> None:
    delayed(app)
    client = TestClient(create_dashboard(app, read_only=True))
    for page in ("/queues", "/workers", "/scheduled", "/retries", "/periodic"):
        html = client.get(page).text
        assert "formaction" not in html and "matching</button>" not in html, page
        assert "Run now</button>" not in html and "Purge</button>" not in html
    for action in ("pause-queue", "run-scheduled", "disable-periodic", "shutdown-worker"):
        assert client.post(f"/actions/{action}", data={"queue": "default"}).status_code == 403
    assert app.control.paused_queues() == [] and len(app.broker.scheduled()) == 1


def test_unknown_actions_and_bad_fields_get_a_clear_page(app: Conveyor, client: TestClient) -> None:
    status, shown = act(client, "/queues", "explode", {})
    assert status == 404 and "no action" in shown
    status, shown = act(client, "/queues", "pool-grow", {"worker": "", "n": "1"})
    assert status == 400 and "no valid worker" in shown
    status, shown = act(client, "/queues", "pause-queue", {})
    assert status == 400 and "select queues first" in shown
    # A name no page could show (control characters), alone or in a selection: refused.
    for form in ({"queue": "a\x00b"}, {"id": ["default", "a\x1bb"]}):
        status, shown = act(client, "/queues", "pause-queue", form)
        assert status == 400 and "no valid queue" in shown
    status, shown = act(client, "/queues", "disable-periodic", {"name": "x\ty"})
    assert status == 400 and "no valid name" in shown
    assert audit(app) == [] and app.control.paused_queues() == []


def test_malformed_delayed_bodies_show_their_reason(app: Conveyor, client: TestClient) -> None:
    app.broker.publish([Message("junk-1", "default", b"\xff not json", countdown=60)])
    page = client.get("/scheduled").text
    assert 'data-scheduled="junk-1"' in page and "undecodable" in page
    assert json.dumps("junk-1")  # the id is shown as text, not decoded


def live_block(client: TestClient, query: str) -> str:
    with client.stream("GET", f"/live?{query}") as stream:
        lines: list[str] = []
        for line in stream.iter_lines():
            lines.append(line)
            if line == "" and lines[1:2] == ["event: live"]:  # after the event's id
                break
    return "\n".join(line.removeprefix("data: ") for line in lines[2:])


def test_live_counts_of_scheduled_messages_and_retries(app: Conveyor, client: TestClient) -> None:
    delayed(app)
    delayed(app, queue="emails")
    body = encode_envelope(Envelope(id="retried-2", task="shop.add", args=[1, 2], retries=1))
    app.broker.publish([Message("retried-2", "default", body, countdown=120)])
    counted = '<span data-figure="scheduled-count">{}</span>'
    assert counted.format(3) in live_block(client, "page=scheduled")
    assert counted.format(1) in live_block(client, "page=scheduled&queue=emails")
    assert counted.format(1) in live_block(client, "page=retries")
    assert counted.format(1) in live_block(client, "page=scheduled&task=shop&search=retried")


@pytest.mark.amqp
def test_on_rabbitmq_delayed_messages_are_listed_run_now_and_cancelled(
    rabbit_server: RabbitServer, tmp_path: Path
) -> None:
    app = Conveyor(
        "shop", broker=rabbit_server.url, result_backend=f"sqlite:///{tmp_path}/results.db"
    )
    try:
        result = app.send_task("shop.add", (1, 2), countdown=600, queue="ops-amqp")
        later = app.send_task("shop.add", (3, 4), countdown=600, queue="ops-amqp")
        client = TestClient(create_dashboard(app))
        page = client.get("/scheduled?queue=ops-amqp").text
        assert f'data-scheduled="{result.id}"' in page
        assert "the body waits in the broker&#39;s delay queues" in page
        status, _ = act(client, "/scheduled", "run-scheduled", {"id": [result.id]})
        assert status == 200
        assert audit(app)[0] == ("run-scheduled", f"delayed messages {result.id}", 1)
        (ready,) = app.broker.lease(["ops-amqp"], 5, 5.0)  # ready now (its copy)
        assert ready.id == result.id
        app.broker.ack([ready])
        status, _ = act(client, "/scheduled", "cancel-scheduled", {"id": [later.id]})
        assert status == 200
        assert app.broker.scheduled(queue="ops-amqp") == []
        assert app.broker.revoked([later.id]) == {later.id}
        assert audit(app)[0] == ("cancel-scheduled", f"delayed messages {later.id}", 1)
    finally:
        app.close()
