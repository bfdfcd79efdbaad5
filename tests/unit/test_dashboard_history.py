"""The dashboard's history side through HTTP (Starlette's test client) on a SQLite broker
with a real in-process worker (TestWorker): the task history folded from events, the task
list's filters and pages, bulk revoke and retry (audited), a task's page (timeline, retry
link, workflow graph, progress), the overview's charts, and bad input. The browser tests
are in tests/e2e/test_dashboard_history.py."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from conveyor import Conveyor, chain, chord, group
from conveyor.dashboard import create_dashboard
from conveyor.dashboard.audit import AuditLog
from conveyor.dashboard.history import TaskFilter, TaskHistory, TaskRow, parse_time
from conveyor.dashboard.indexer import BATCH, HistoryIndexer, apply
from conveyor.dashboard.taskpages import parse_filter
from conveyor.events.model import Event
from conveyor.results.base import ResultRecord
from conveyor.testing import TestWorker
from tests.conftest import wait_until


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Conveyor]:
    app = Conveyor(
        "shop",
        broker=f"sqlite:///{tmp_path}/broker.db",
        result_extended=True,
        worker_send_task_events=True,
    )

    @app.task(name="shop.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="shop.sum")
    def sum_(values: list[int], extra: int = 0) -> int:
        return sum(values) + extra

    @app.task(name="shop.connect")
    def connect(url: str) -> None:
        raise ConnectionError(f"cannot reach {url}")

    @app.task(name="shop.fail")
    def fail(order: int, password: str = "") -> None:
        raise ValueError(f"order {order} is broken")

    @app.task(name="shop.step", bind=True)
    def step(self: Any, value: int) -> int:
        self.update_state(state="PROGRESS", meta={"current": 3, "total": 4})
        return value + 1

    yield app
    app.close()


@pytest.fixture
def client(app: Conveyor, tmp_path: Path) -> Iterator[TestClient]:
    """The dashboard, its history folded by its thread (the lifespan) and before each page."""
    with TestClient(create_dashboard(app, history=tmp_path / "history.db")) as client:
        yield client


@pytest.fixture
def history(tmp_path: Path) -> Iterator[TaskHistory]:
    """The client's history file, read directly."""
    opened = TaskHistory(tmp_path / "history.db")
    yield opened
    opened.close()


def run(app: Conveyor) -> None:
    with TestWorker(app) as worker:
        worker.run_until_idle(propagate=False)
    app.events.flush()


def token_of(html: str) -> str:
    match = re.search(r'name="token" value="([^"]+)"', html)
    assert match, "the page has an action form"
    return match.group(1)


def task_ids(html: str) -> list[str]:
    return re.findall(r'data-task="([^"]+)"', html)


def test_history_lists_and_filters_tasks(app: Conveyor, client: TestClient) -> None:
    ok = [app.send_task("shop.add", (i, i)) for i in range(3)]
    bad = app.send_task("shop.fail", (77,), {"password": "hunter2"})
    other = app.send_task("shop.add", (5, 5), queue="emails")  # no worker consumes it
    run(app)

    page = client.get("/tasks")
    assert page.status_code == 200
    listed = task_ids(page.text)
    assert set(listed) == {r.id for r in [*ok, bad, other]}
    assert listed[0] == other.id  # newest first
    assert "hunter2" not in page.text and "[redacted]" in page.text

    failed = client.get("/tasks", params={"state": "FAILURE"}).text
    assert task_ids(failed) == [bad.id]
    assert "ValueError: order 77 is broken" in failed
    assert task_ids(client.get("/tasks", params={"queue": "emails"}).text) == [other.id]
    queued = client.get("/tasks", params={"state": "queued"}).text  # any case
    assert task_ids(queued) == [other.id]
    assert set(task_ids(client.get("/tasks", params={"name": "shop.a*"}).text)) == {
        r.id for r in [*ok, other]
    }
    # Search: an id, the start of one, argument text (three characters or more, any case).
    assert task_ids(client.get("/tasks", params={"search": bad.id}).text) == [bad.id]
    assert task_ids(client.get("/tasks", params={"search": bad.id[:8]}).text) == [bad.id]
    assert task_ids(client.get("/tasks", params={"search": "[77]"}).text) == [bad.id]
    assert task_ids(client.get("/tasks", params={"search": "REDACTED"}).text) == [bad.id]
    assert task_ids(client.get("/tasks", params={"search": "[5, 5]"}).text) == [other.id]
    succeeded = client.get("/tasks", params={"state": "SUCCESS"}).text
    assert set(task_ids(succeeded)) == {r.id for r in ok}
    future = client.get("/tasks", params={"since": "2999-01-01T00:00"}).text
    assert task_ids(future) == [] and "No tasks match this filter" in future
    recent = client.get("/tasks", params={"since": "1h", "until": str(int(time.time()) + 60)})
    assert len(task_ids(recent.text)) == 5
    # Filters stay in the form (and so in the URL of the next page).
    assert 'value="FAILURE" selected' in failed


def test_worker_filter_and_pages(app: Conveyor, client: TestClient, history: TaskHistory) -> None:
    results = [app.send_task("shop.add", (i, 1)) for i in range(7)]
    run(app)
    client.get("/tasks")  # folds the events
    worker = history.get(results[0].id)
    assert worker is not None and worker.worker and worker.state == "SUCCESS"
    assert worker.runtime is not None and worker.started_at and worker.done_at
    page = client.get("/tasks", params={"worker": worker.worker}).text
    assert len(task_ids(page)) == 7
    assert task_ids(client.get("/tasks", params={"worker": "nobody@nowhere"}).text) == []

    first = client.get("/tasks", params={"size": 25}).text
    assert len(task_ids(first)) == 7 and 'rel="next"' not in first
    # Keyset pages: the rows older than the last one of the page before.
    rows = history.tasks(TaskFilter(state="SUCCESS"), limit=3)
    newest = [r.id for r in reversed(results)]
    assert [r.id for r, _ in rows] == newest[:3]
    cursor = (rows[-1][0].first_at, rows[-1][1])
    older = history.tasks(TaskFilter(state="SUCCESS"), limit=10, before=cursor)
    assert [r.id for r, _ in older] == newest[3:]


def test_pagination_links_walk_every_task(app: Conveyor, client: TestClient) -> None:
    sent = [app.send_task("shop.add", (i, 0), queue="later") for i in range(60)]
    app.events.flush()
    url = "/tasks?queue=later&size=25"
    seen: list[str] = []
    for _ in range(5):
        page = client.get(url)
        assert page.status_code == 200
        seen += task_ids(page.text)
        match = re.search(r'rel="next" href="([^"]+)"', page.text)
        if not match:
            break
        assert "queue=later" in match.group(1)  # the filter is kept
        url = match.group(1).replace("&amp;", "&")
    assert seen == [r.id for r in reversed(sent)]


def test_bulk_revoke_selection_and_matching_are_audited(app: Conveyor, client: TestClient) -> None:
    sent = [app.send_task("shop.add", (i, 0), queue="later") for i in range(4)]
    app.events.flush()
    page = client.get("/tasks", params={"state": "QUEUED"}).text
    assert "Revoke all 4 matching" in page
    answer = client.post(
        "/actions/revoke-tasks",
        data={"token": token_of(page), "id": [sent[0].id], "state": "QUEUED"},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/tasks?state=QUEUED"
    assert app.broker.revoked([r.id for r in sent]) == {sent[0].id}

    page = client.get("/tasks", params={"state": "QUEUED", "queue": "later"}).text
    answer = client.post(
        "/actions/revoke-tasks",
        data={"token": token_of(page), "scope": "matching", "state": "QUEUED", "queue": "later"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert app.broker.revoked([r.id for r in sent]) == {r.id for r in sent}
    audit = client.get("/audit").text
    assert "revoke-tasks" in audit and "tasks matching state=QUEUED, queue=later" in audit
    assert f"tasks {sent[0].id}" in audit
    # "everything matching" needs a state that can still be revoked.
    page = client.get("/tasks").text
    refused = client.post(
        "/actions/revoke-tasks", data={"token": token_of(page), "scope": "matching"}
    )
    assert refused.status_code == 400


def test_bulk_terminate_selection_and_matching_are_audited(
    app: Conveyor, client: TestClient
) -> None:
    sent = [app.send_task("shop.add", (i, 0), queue="later") for i in range(3)]
    app.events.flush()
    ids = [r.id for r in sent]
    terminated = [f"terminate:{i}" for i in ids]
    page = client.get("/tasks", params={"state": "QUEUED", "queue": "later"}).text
    assert "Terminate all 3 matching" in page and "Terminate selected" in page
    form = {"token": token_of(page), "id": [ids[0]], "state": "QUEUED", "queue": "later"}
    assert client.post("/actions/terminate-tasks", data=form).status_code == 200
    assert app.broker.revoked(terminated) == {terminated[0]}
    assert app.broker.revoked(ids) == {ids[0]}  # a terminated task is revoked too

    page = client.get("/tasks", params={"state": "QUEUED", "queue": "later"}).text
    form = {"token": token_of(page), "scope": "matching", "state": "QUEUED", "queue": "later"}
    assert client.post("/actions/terminate-tasks", data=form).status_code == 200
    assert app.broker.revoked(terminated) == set(terminated)
    entries = AuditLog(lambda: app.kv).entries()
    assert [(e.action, e.target, e.count) for e in entries[:2]] == [
        ("terminate-tasks", "tasks matching state=QUEUED, queue=later", 3),
        ("terminate-tasks", f"tasks {ids[0]}", 1),
    ]
    page = client.get("/tasks").text
    refused = client.post(
        "/actions/terminate-tasks", data={"token": token_of(page), "scope": "matching"}
    )
    assert refused.status_code == 400 and "unfinished state to terminate" in refused.text


def test_url_passwords_in_errors_are_hidden(app: Conveyor, client: TestClient) -> None:
    failed = app.send_task("shop.connect", ("redis://app:pw-in-url@cache:6379/0",))
    run(app)
    client.get("/tasks")
    for page in (client.get(f"/tasks/{failed.id}").text, client.get("/tasks").text):
        assert "cannot reach redis://app:***@cache:6379/0" in page
        assert "pw-in-url" not in page


def test_retry_a_failed_task_links_both_ways(app: Conveyor, client: TestClient) -> None:
    bad = app.send_task("shop.fail", (5,), {"password": "s3cret"})
    run(app)
    page = client.get(f"/tasks/{bad.id}")
    assert page.status_code == 200
    assert "FAILURE" in page.text and "Retry" in page.text
    assert "s3cret" not in page.text and "[redacted]" in page.text
    assert 'data-event="task-failed"' in page.text and 'data-event="task-sent"' in page.text
    answer = client.post(
        "/actions/retry",
        data={"token": token_of(page.text), "task_id": bad.id},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    new_id = answer.headers["location"].rsplit("/", 1)[1]
    assert new_id != bad.id
    new_page = client.get(f"/tasks/{new_id}").text
    assert 'data-link="retry-of"' in new_page and bad.id in new_page
    assert 'data-link="retried-as"' in client.get(f"/tasks/{bad.id}").text
    run(app)  # the retry runs with the same arguments, and fails the same way
    record = app.results.get(new_id)
    assert record is not None and record.state == "FAILURE"
    assert record.args == [5] and record.kwargs == {"password": "s3cret"}
    assert f"task {bad.id} (as {new_id})" in client.get("/audit").text


def test_bulk_retry_of_failed_tasks_matching(app: Conveyor, client: TestClient) -> None:
    bad = [app.send_task("shop.fail", (i,)) for i in range(3)]
    app.send_task("shop.add", (1, 1))
    run(app)
    page = client.get("/tasks", params={"state": "FAILURE"}).text
    assert "Retry all 3 matching" in page
    client.post(
        "/actions/retry-tasks",
        data={"token": token_of(page), "scope": "matching", "state": "FAILURE"},
    )
    history_page = client.get("/tasks", params={"state": "QUEUED"}).text
    assert len(task_ids(history_page)) == 3
    assert history_page.count("a retry of") == 3
    assert "failed tasks matching state=FAILURE" in client.get("/audit").text
    retried_from = set(re.findall(r'title="a retry of ([^"]+)"', history_page))
    assert retried_from == {b.id for b in bad}


def test_workflow_graph_children_and_progress(
    app: Conveyor, client: TestClient, history: TaskHistory
) -> None:
    add = app.tasks["shop.add"]
    work = chain(add.s(1, 2), add.s(10), group(add.s(100), add.s(1000)))
    work.apply_async()
    run(app)
    client.get("/tasks")
    rows = history.tasks(TaskFilter(name="shop.add"))
    assert len(rows) == 4
    (root,) = {row.root_id for row, _ in rows}
    assert root is not None
    page = client.get(f"/tasks/{root}")
    assert page.status_code == 200
    assert '<svg class="workflow"' in page.text
    assert page.text.count("data-node=") >= 4
    assert "<h2>Children</h2>" in page.text
    # Nothing in the graph runs script: links and shapes only.
    assert "<script" not in page.text.split("<main>")[1]

    step = app.send_task("shop.step", (1,))
    run(app)
    done = client.get(f"/tasks/{step.id}").text
    assert 'data-figure="result">2<' in done


def test_a_chord_is_drawn_whole_from_any_of_its_tasks(
    app: Conveyor, client: TestClient, history: TaskHistory
) -> None:
    add = app.tasks["shop.add"]
    done = chord(group(add.s(1, 2), add.s(3, 4)), app.tasks["shop.sum"].s(100)).apply_async()
    run(app)
    run(app)  # the body, sent when the header finished
    assert done.get(timeout=10) == 110
    client.get("/tasks")
    chord_rows = [row for row, _ in history.tasks(TaskFilter())]
    assert len(chord_rows) == 3
    for row in chord_rows:  # header tasks (two roots, one group) and the body
        page = client.get(f"/tasks/{row.id}").text
        nodes = set(re.findall(r'data-node="([^"]+)"', page))
        assert nodes == {r.id for r in chord_rows}, row
        assert page.count('class="group"') == 1


def test_progress_is_shown_while_running(app: Conveyor, client: TestClient) -> None:
    result = app.send_task("shop.step", (1,))
    # What the task's update_state writes while it runs.
    app.results.store(
        [ResultRecord(result.id, "PROGRESS", result={"current": 3, "total": 4}, name="shop.step")]
    )
    page = client.get(f"/tasks/{result.id}").text
    assert 'data-figure="percent">75%<' in page
    assert 'data-live="task"' in page and f'data-live-task="{result.id}"' in page


def test_overview_charts_from_history(app: Conveyor, client: TestClient) -> None:
    for i in range(4):
        app.send_task("shop.add", (i, 1))
    app.send_task("shop.fail", (1,))
    run(app)
    page = client.get("/")
    assert page.status_code == 200
    assert 'data-figure="succeeded">4<' in page.text
    assert 'data-figure="failed">1<' in page.text
    assert page.text.count('<figure class="chart">') == 2
    assert 'class="bar ok"' in page.text and 'class="bar failed"' in page.text
    day = client.get("/", params={"range": "day"})
    assert day.status_code == 200 and 'data-figure="succeeded">4<' in day.text
    assert client.get("/", params={"range": "year"}).status_code == 400


def test_history_survives_a_new_dashboard(app: Conveyor, tmp_path: Path) -> None:
    sent = app.send_task("shop.add", (2, 2))
    run(app)
    with TestClient(create_dashboard(app, history=tmp_path / "h.db")) as first:
        assert task_ids(first.get("/tasks").text) == [sent.id]
    # The events are gone from the broker: the history still has the task.
    app.broker.streams.delete("events")
    with TestClient(create_dashboard(app, history=tmp_path / "h.db")) as second:
        assert task_ids(second.get("/tasks").text) == [sent.id]
        assert 'data-event="task-succeeded"' in second.get(f"/tasks/{sent.id}").text


@pytest.mark.parametrize(
    "query",
    [
        {"state": "NOPE"},
        {"since": "yesterday"},
        {"since": "2024-13-45T99:99"},
        {"until": "1h", "since": "1m"},
        {"size": "7"},
        {"size": "many"},
        {"before": "x_y"},
        {"before": "1e400_3"},
        {"name": "x" * 201},
        {"search": "a\x00b"},
    ],
)
def test_malformed_filters_get_a_400_page(client: TestClient, query: dict[str, str]) -> None:
    answer = client.get("/tasks", params=query)
    assert answer.status_code == 400
    assert "Traceback" not in answer.text and '<p class="error">' in answer.text


def test_unknown_task_and_bad_actions(app: Conveyor, client: TestClient) -> None:
    assert client.get("/tasks/no-such-task").status_code == 404
    assert client.get("/tasks/" + "x" * 300).status_code == 404
    page = client.get("/tasks").text
    unknown = client.post("/actions/retry", data={"token": token_of(page), "task_id": "nope"})
    assert unknown.status_code == 409 and "cannot be retried" in unknown.text
    page = client.get("/tasks").text
    nothing = client.post("/actions/retry-tasks", data={"token": token_of(page)})
    assert nothing.status_code == 400
    replayed = client.post("/actions/retry-tasks", data={"token": token_of(page)})
    assert replayed.status_code == 403  # the token was used once already
    assert "revoke-tasks" not in client.get("/audit").text


def test_read_only_shows_history_without_actions(app: Conveyor, tmp_path: Path) -> None:
    app.send_task("shop.fail", (1,))
    run(app)
    with TestClient(create_dashboard(app, read_only=True, history=tmp_path / "h.db")) as client:
        page = client.get("/tasks").text
    assert len(task_ids(page)) == 1
    assert "Retry selected" not in page and 'name="token"' not in page


def test_fold_keeps_the_latest_state_whatever_the_order() -> None:
    def event(kind: str, at: float, **fields: object) -> Event:
        return Event(kind, at, "w1", "", {"uuid": "t1", **fields})

    row = TaskRow("t1", first_at=10.0)
    done = apply(row, event("task-succeeded", 12.0, runtime=0.5, name="a", queue="q"))
    late_sent = apply(done, event("task-sent", 10.0, args="[1]", kwargs="{}"))
    assert late_sent.state == "SUCCESS" and late_sent.args == "[1]"
    assert late_sent.first_at == 10.0 and late_sent.runtime == 0.5 and late_sent.worker == "w1"
    junk = apply(late_sent, event("task-failed", 13.0, runtime="slow", retries="x"))
    assert junk.state == "FAILURE" and junk.runtime == 0.5 and junk.retries == 0


def test_a_late_stamped_task_sent_never_replaces_a_workers_state() -> None:
    """The producer stamps task-sent after its publish returns: under load a worker may
    have failed the task a millisecond before. (The e2e FAILURE filter missed such a task.)"""

    def event(kind: str, at: float) -> Event:
        return Event(kind, at, "w1", "", {"uuid": "t1"})

    failed = apply(TaskRow("t1"), event("task-failed", 10.0))
    for folded in (
        apply(failed, event("task-sent", 10.002)),
        apply(apply(TaskRow("t1"), event("task-sent", 10.002)), event("task-failed", 10.0)),
    ):
        assert folded.state == "FAILURE"
    sent = apply(TaskRow("t1"), event("task-sent", 9.0))
    assert sent.state == "QUEUED" and apply(sent, event("task-sent", 9.5)).state == "QUEUED"
    assert apply(sent, event("task-received", 9.1)).state == "RECEIVED"


def test_indexer_folds_each_event_once(tmp_path: Path) -> None:
    app = Conveyor("x", broker=f"sqlite:///{tmp_path}/b.db", worker_send_task_events=True)
    try:
        for i in range(30):
            app.events.writer.emit("task-sent", {"uuid": f"t{i}", "name": "n", "queue": "q"})
        app.events.writer.emit("task-succeeded", {"uuid": "t1", "runtime": 1.0})
        app.events.flush()
        history = TaskHistory(tmp_path / "h.db")
        one = HistoryIndexer(lambda: app.broker.streams, history)
        two = HistoryIndexer(lambda: app.broker.streams, history)
        assert one.catch_up(limit=10) == 10
        assert two.catch_up() == 21
        assert one.catch_up() == 0
        assert history.count(TaskFilter()) == 30
        assert len(history.timeline("t1")) == 2
        (bucket,) = [b for b in history.buckets(time.time() - 120, 60, 3) if b.sent]
        assert bucket.sent == 30 and bucket.succeeded == 1 and bucket.runtime_avg == 1.0
        history.close()
    finally:
        app.close()


def test_parse_time() -> None:
    assert parse_time("1970-01-01T00:01") == 60.0
    assert abs(parse_time("1h") - (time.time() - 3600)) < 5
    with pytest.raises(ValueError, match="not a time"):
        parse_time("soon")
    # A filter survives its trip through a form or a link (times to the second).
    where = parse_filter({"since": "1h", "until": "1m", "state": "failure", "name": "a.*"})
    again = parse_filter(where.fields())
    assert again.state == "FAILURE" and again.name == "a.*"
    assert where.since is not None and again.since is not None
    assert abs(again.since - where.since) < 1


def test_malformed_events_are_skipped_and_old_rows_swept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = Conveyor("x", broker=f"sqlite:///{tmp_path}/b.db", worker_send_task_events=True)
    history = TaskHistory(tmp_path / "h.db", keep=3600.0)
    try:
        streams = app.broker.streams
        bad = [b"\xff not json", b"[1]", b'{"type": "task-sent", "timestamp": "x"}']
        streams.append("events", bad, max_length=100, max_age=60)
        old = time.time() - 7200
        writer = app.events.writer
        writer.emit("task-sent", {"uuid": "old", "name": "n", "args": "[1]", "kwargs": "{}"})
        writer.emit("task-sent", {"uuid": "new", "name": "n", "args": "[2]", "kwargs": "{}"})
        writer.emit("task-failed", {"uuid": "new", "runtime": True, "exception": 3})
        app.events.flush()
        indexer = HistoryIndexer(lambda: streams, history)
        assert indexer.catch_up() == 6
        assert "skipping the event" in caplog.text
        assert {r.id for r, _ in history.tasks(TaskFilter())} == {"old", "new"}
        new = history.get("new")
        assert new is not None and new.state == "FAILURE" and new.runtime is None
        # "old" last changed two hours ago: past keep, the next sweep deletes it.
        with history.db.write() as conn:
            conn.execute(
                "UPDATE conveyor_task_history SET at = ?, first_at = ? WHERE id = 'old'", (old, old)
            )
            conn.execute("UPDATE conveyor_history_position SET swept_at = 0")
        indexer.catch_up()
        assert [r.id for r, _ in history.tasks(TaskFilter())] == ["new"]
        assert history.tasks(TaskFilter(search="[1]")) == []
        with history.db.read() as conn:  # gone from the search index too
            found = conn.execute(
                "SELECT rowid FROM conveyor_task_search WHERE conveyor_task_search MATCH ?",
                ('"[1]"',),
            ).fetchall()
        assert found == []
        assert [r.id for r, _ in history.tasks(TaskFilter(search="[2]"))] == ["new"]
    finally:
        history.close()
        app.close()


def test_live_refuses_bad_parameters_with_a_page(client: TestClient) -> None:
    assert client.get("/live", params={"page": "tasks", "state": "NOPE"}).status_code == 400
    assert client.get("/live", params={"page": "task", "task_id": "unknown"}).status_code == 404


def test_a_mounted_dashboard_runs_the_history_thread_from_the_outer_lifespan(
    app: Conveyor, tmp_path: Path
) -> None:
    dashboard = create_dashboard(app, history=tmp_path / "h.db")
    indexer: HistoryIndexer = dashboard.state.history_indexer

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        indexer.start()
        yield
        indexer.stop()

    site = Starlette(routes=[Mount("/ops", app=dashboard)], lifespan=lifespan)
    sent = app.send_task("shop.add", (1, 1))
    app.events.flush()
    with TestClient(site) as client:
        history = TaskHistory(tmp_path / "h.db")
        try:  # the thread folds without any page being opened
            wait_until(lambda: history.get(sent.id), 10, "the thread folds the event")
        finally:
            history.close()
        assert task_ids(client.get("/ops/tasks").text) == [sent.id]
    indexer.history.close()


def test_without_kept_arguments_the_page_says_why_there_is_no_retry(tmp_path: Path) -> None:
    app = Conveyor("bare", broker=f"sqlite:///{tmp_path}/b.db", worker_send_task_events=True)

    @app.task(name="bare.fail")
    def fail() -> None:
        raise ValueError("no")

    try:
        bad = app.send_task("bare.fail")
        run(app)
        with TestClient(create_dashboard(app, history=tmp_path / "h.db")) as client:
            page = client.get(f"/tasks/{bad.id}").text
            assert 'data-hint="no-retry"' in page and "/actions/retry" not in page
    finally:
        app.close()


def test_a_broker_without_streams_ends_the_thread_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def no_streams() -> Any:
        raise NotImplementedError("ThisBroker keeps no streams")

    history = TaskHistory(tmp_path / "h.db")
    indexer = HistoryIndexer(no_streams, history)
    try:
        indexer.start()
        thread = indexer._thread
        assert thread is not None
        thread.join(10)
        assert not thread.is_alive()
        assert caplog.text.count("no task history: ThisBroker keeps no streams") == 1
    finally:
        indexer.stop()
        history.close()


def test_the_page_says_when_the_history_is_behind(app: Conveyor, tmp_path: Path) -> None:
    for n in range(BATCH + 10):
        app.events.writer.emit("task-sent", {"uuid": f"t{n}", "name": "shop.add"})
    app.events.flush()
    # No lifespan, so no thread: each page folds one batch.
    client = TestClient(create_dashboard(app, history=tmp_path / "h.db"))
    first = client.get("/tasks").text
    assert 'data-hint="behind"' in first
    later = client.get("/tasks").text
    assert 'data-hint="behind"' not in later
    assert f"{BATCH + 10:,}</span> task(s) match" in later


def test_events_trimmed_before_they_were_folded_are_reported(app: Conveyor, tmp_path: Path) -> None:
    streams = app.broker.streams
    client = TestClient(create_dashboard(app, history=tmp_path / "h.db"))  # no thread
    now = time.time()
    first = f'{{"type": "task-sent", "timestamp": {now}, "uuid": "a"}}'.encode()
    streams.append("events", [first], max_length=5, max_age=60)
    assert 'data-hint="lost"' not in client.get("/tasks").text
    # Twenty more while nobody folds: the stream keeps the newest five.
    for n in range(20):
        body = f'{{"type": "task-sent", "timestamp": {now}, "uuid": "b{n}"}}'.encode()
        streams.append("events", [body], max_length=5, max_age=60)
    page = client.get("/tasks").text
    assert 'data-hint="lost"' in page
    folded = int(re.findall(r"(\d+)</span> task\(s\) match", page)[0])
    assert 6 <= folded < 21  # "a" and the newest few (SQLite may keep a batch more)
