"""The dashboard's history side in Debian's chromium: ``conveyor worker`` and ``conveyor
dashboard`` as real processes, on a SQLite broker and on Redis (tasks in
tests/e2e/historyapp.py: events on, arguments kept). The tasks page filters, a failed task
is retried from its page, queued tasks are revoked in bulk (both audited), a task's progress
and the overview's charts update live, and a workflow is drawn.

Screenshots go to ``$CONVEYOR_E2E_SCREENSHOTS`` (``dashboard-*.png``, SQLite run) when set.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from playwright.sync_api import expect

from conveyor import Conveyor, group
from tests.conftest import wait_until
from tests.e2e.conftest import ROOT
from tests.e2e.historyapp import create_app
from tests.servers import RedisServer, free_port

TOKEN = "e2e-history-token"


class Fleet:
    """A worker (queue ``default``) and a dashboard on one broker, and a client app."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.dir = Path(tempfile.mkdtemp(prefix=f"conveyor-history-e2e-{kind}-"))
        self.redis: RedisServer | None = None
        if kind == "redis":
            self.redis = RedisServer(appendonly=False)
            self.redis.start()
            self.broker_url = self.redis.url
        else:
            self.broker_url = f"sqlite:///{self.dir}/broker.db"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "CONVEYOR_BROKER_URL": self.broker_url,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("CONVEYOR_RESULT_BACKEND", None)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, IO[bytes]] = {}
        self.client: Conveyor = create_app(self.broker_url)

    def spawn(self, name: str, *args: str) -> None:
        log = self.logs[name] = (self.dir / f"{name}.log").open("wb")
        command = [sys.executable, "-m", "conveyor", "-A", "tests.e2e.historyapp", *args]
        self.processes[name] = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def start(self) -> None:
        self.spawn("worker", "worker", "-c", "2", "-Q", "default")
        history = str(self.dir / "history.sqlite3")
        bind = f"127.0.0.1:{self.port}"
        self.spawn("dashboard", "dashboard", "--bind", bind, "--token", TOKEN, "--history", history)
        wait_until(self.serving, 30, "the dashboard answers", interval=0.1)

    def serving(self) -> bool:
        try:
            urllib.request.urlopen(self.url + "/", timeout=2)
        except urllib.error.HTTPError as exc:
            return exc.code == 401  # up, and asking for credentials
        except (urllib.error.URLError, OSError):
            return False
        return False

    def output(self) -> str:
        return "\n".join(
            f"--- {self.kind} {name}\n"
            + (self.dir / f"{name}.log").read_text(errors="replace")[-4000:]
            for name in self.logs
        )

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        for log in self.logs.values():
            log.close()
        self.client.close()
        if self.redis is not None:
            self.redis.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def fleet(request: pytest.FixtureRequest) -> Iterator[Fleet]:
    running = Fleet(request.param)
    try:
        running.start()
        yield running
    finally:
        print(running.output())  # shown when a test failed
        running.stop()


@pytest.fixture
def page(browser: Any, fleet: Fleet) -> Iterator[Any]:
    context = browser.new_context(
        base_url=fleet.url,
        viewport={"width": 1280, "height": 860},
        http_credentials={"username": "ops", "password": TOKEN},
    )
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # confirmations: yes
    yield page
    context.close()


@pytest.fixture
def snap(fleet: Fleet, shot: Any) -> Any:
    """Screenshots of the SQLite run only (the pages look the same on Redis)."""
    return (lambda page, name: shot(page, name)) if fleet.kind == "sqlite" else (lambda *_: None)


def rows(page: Any) -> list[str]:
    return [str(r.get_attribute("data-task")) for r in page.locator("tr[data-task]").all()]


def open_list(page: Any, url: str, count: int) -> None:
    """Open ``url`` again until it lists ``count`` tasks (events reach the history within a
    flush interval or so; the list page does not update itself)."""

    deadline = time.monotonic() + 40
    while True:
        page.goto(url)
        if page.locator("tr[data-task]").count() == count:
            return
        if time.monotonic() > deadline:
            shown = page.locator("table.tasks").inner_text() if rows(page) else "no rows"
            pytest.fail(f"{url} lists {count} tasks not met within 40 s; it lists:\n{shown}")
        time.sleep(0.3)  # the next look (the list page does not update itself)


def test_tasks_page_filters_narrow(page: Any, fleet: Fleet, snap: Any) -> None:
    charge = fleet.client.tasks["orders.charge"]
    ok = [charge.delay(100 + i, card="visa") for i in range(3)]
    bad = [charge.delay(200 + i, card="declined", password="hunter2") for i in range(2)]
    for result in ok:
        result.get(timeout=30)
    for result in bad:
        wait_until(lambda r=result: r.state == "FAILURE", 30, "the charge fails")
    mine = {r.id for r in ok + bad}
    open_list(page, "/tasks?name=orders.charge", len(mine))
    assert set(rows(page)) == mine
    assert "hunter2" not in page.content()
    # The count of matching tasks follows new ones without a reload (the rows stay put).
    count = page.locator('[data-figure="task-count"]')
    assert count.inner_text() == str(len(mine))
    extra = charge.delay(150, card="visa")
    extra.get(timeout=30)
    expect(count).to_have_text(str(len(mine) + 1), timeout=20_000)
    mine.add(extra.id)

    page.select_option("select[name=state]", "FAILURE")
    page.click(".filters button")
    page.wait_for_url(re.compile(r"state=FAILURE"))
    # The result store may say FAILURE a moment before the worker's event arrives.
    open_list(page, page.url, len(bad))
    assert set(rows(page)) == {r.id for r in bad}
    assert "card declined" in page.locator("table.tasks").inner_text()
    snap(page, "dashboard-tasks")

    # Search by an argument value; the URL keeps every filter.
    page.goto("/tasks")
    page.fill("input[name=search]", "[101]")
    page.click(".filters button")
    page.wait_for_url(re.compile(r"search="))
    assert rows(page) == [ok[1].id]
    page.goto(f"/tasks?search={bad[0].id[:10]}")
    assert rows(page) == [bad[0].id]
    # A malformed filter: a page that says why, not a traceback.
    answer = page.goto("/tasks?state=SOMETIMES")
    assert answer.status == 400 and "no task state" in page.locator("p.error").inner_text()


def test_retry_a_failed_task_from_its_page(page: Any, fleet: Fleet, snap: Any) -> None:
    bad = fleet.client.tasks["orders.charge"].delay(301, card="declined")
    wait_until(lambda: bad.state == "FAILURE", 30, "the charge fails")
    page.goto(f"/tasks/{bad.id}")
    expect(page.locator('[data-figure="state"]')).to_have_text("FAILURE")
    expect(page.locator('tr[data-event="task-failed"]')).to_have_count(1)
    assert "card declined" in page.locator("pre.traceback").inner_text()
    snap(page, "dashboard-task-failed")
    with page.expect_navigation():
        page.click("button:text('Retry')")
    new_id = page.url.rsplit("/", 1)[1]
    assert new_id != bad.id
    assert page.locator('a[data-link="retry-of"]').inner_text() == bad.id
    # The new task runs on the worker with the same arguments and fails the same way; the
    # page shows it without a reload.
    expect(page.locator('[data-figure="state"]')).to_have_text("FAILURE", timeout=30_000)
    record = fleet.client.results.get(new_id)
    assert record is not None and record.args == [301] and record.kwargs == {"card": "declined"}
    page.goto(f"/tasks/{bad.id}")
    assert page.locator('a[data-link="retried-as"]').inner_text() == new_id
    page.goto("/audit")
    assert f"task {bad.id} (as {new_id})" in page.locator("table.audit").inner_text()


def test_revoke_everything_matching_the_filter(page: Any, fleet: Fleet) -> None:
    charge = fleet.client.tasks["orders.charge"]
    queue = f"parked-{uuid.uuid4().hex[:6]}"
    parked = [charge.apply_async((400 + i,), queue=queue) for i in range(4)]
    ids = [r.id for r in parked]
    questions: list[str] = []
    page.on("dialog", lambda dialog: questions.append(dialog.message))
    open_list(page, f"/tasks?state=QUEUED&queue={queue}", 4)
    # Terminate a selection of one: the question counts it.
    page.check(f'tr[data-task="{ids[0]}"] input[name=id]')
    with page.expect_navigation():
        page.click("button:text('Terminate selected')")
    assert questions.pop() == "Terminate 1 selected task(s)?"
    assert fleet.client.broker.revoked([f"terminate:{ids[0]}"]) == {f"terminate:{ids[0]}"}
    # Everything matching the filter: the question names the count and the filter.
    with page.expect_navigation():
        page.click("button:text('Revoke all 4 matching')")
    assert questions.pop() == f"Revoke all 4 task(s) matching state=QUEUED, queue={queue}?"
    assert fleet.client.broker.revoked(ids) == set(ids)
    page.goto("/audit")
    rows = page.locator("table.audit tbody tr")
    row = rows.first.inner_text()
    assert "revoke-tasks" in row and f"state=QUEUED, queue={queue}" in row and "4" in row
    assert "ops (token)" in row
    assert "terminate-tasks" in rows.nth(1).inner_text() and ids[0] in rows.nth(1).inner_text()


def test_progress_updates_live(page: Any, fleet: Fleet) -> None:
    result = fleet.client.tasks["reports.build"].delay(8, 0.6)
    page.goto(f"/tasks/{result.id}")
    percent = page.locator('[data-figure="percent"]')
    expect(percent).to_have_text(re.compile(r"^[1-9]\d?%$"), timeout=20_000)
    first = percent.inner_text()
    expect(percent).not_to_have_text(first, timeout=20_000)  # moved on, without a reload
    expect(page.locator('[data-figure="state"]')).to_have_text("SUCCESS", timeout=30_000)
    expect(page.locator('[data-figure="result"]')).to_contain_text("8 pages")


def test_workflow_graph(page: Any, fleet: Fleet, snap: Any) -> None:
    total = fleet.client.tasks["orders.total"]
    first_id = str(uuid.uuid4())
    work = total.s(1, 2).set(task_id=first_id) | total.s(3) | group(total.s(10), total.s(20))
    work.apply_async()
    wait_until(lambda: fleet.client.AsyncResult(first_id).ready(), 30, "the first step runs")

    def drawn() -> bool:  # each step's events reach the history a moment after it ran
        page.goto(f"/tasks/{first_id}")
        return page.locator("svg.workflow [data-node]").count() == 4

    wait_until(drawn, 30, "the workflow's four tasks are drawn", interval=0.3)
    assert page.locator("svg.workflow rect.group").count() == 1
    snap(page, "dashboard-workflow")
    # Nodes link to their tasks. The live stream redraws the region (the workflow with it)
    # only when it changed, never on connecting: a redraw between the press and the release
    # of the button would swallow the click.
    expect(page.locator("#live[data-streaming]")).to_have_count(1)
    with page.expect_navigation():
        page.locator("svg.workflow [data-node]").last.click()
    assert "/tasks/" in page.url and page.locator("svg.workflow").count() == 1


def test_overview_charts_update_live(page: Any, fleet: Fleet, snap: Any) -> None:
    charge = fleet.client.tasks["orders.charge"]
    charge.delay(500, card="visa").get(timeout=30)
    page.goto("/")
    expect(page.locator("figure.chart")).to_have_count(2)
    succeeded = page.locator('[data-figure="succeeded"]')
    expect(succeeded).not_to_have_text("0")
    before = int(succeeded.inner_text())
    for result in [charge.delay(600 + i, card="visa") for i in range(3)]:
        result.get(timeout=30)
    # No reload: the live region brings the new figure (and maybe some earlier ones').
    wait_until(lambda: int(succeeded.inner_text()) >= before + 3, 20, "the figure grows")
    assert page.locator("svg rect.bar.ok").count() >= 1
    snap(page, "dashboard-charts")
    page.click("text=day")
    page.wait_for_url(re.compile(r"range=day"))
    expect(page.locator("figure.chart")).to_have_count(2)


def test_history_pages_and_actions_refuse_strangers(browser: Any, fleet: Fleet) -> None:
    context = browser.new_context(base_url=fleet.url)
    try:
        for path in ("/tasks", "/tasks?state=FAILURE", "/live?page=tasks"):
            assert context.request.get(path).status == 401, path
        posted = context.request.post("/actions/revoke-tasks", form={"scope": "matching"})
        assert posted.status == 401
    finally:
        context.close()
