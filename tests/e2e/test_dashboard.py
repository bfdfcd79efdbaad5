"""The dashboard in Debian's chromium: ``conveyor dashboard`` (with a token, and a second one
``--read-only``) and ``conveyor worker`` as real processes on a SQLite broker in a temporary
directory.

Screenshots go to ``$CONVEYOR_E2E_SCREENSHOTS`` (``dashboard-*.png``) when it is set.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from playwright.sync_api import expect

from conveyor import Conveyor, states
from tests.conftest import wait_until
from tests.e2e.conftest import ROOT
from tests.integration.workerapp import create_app
from tests.servers import free_port

TOKEN = "e2e-token"


class Fleet:
    """A worker and a dashboard (``--token``) on one SQLite broker, and a client app."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="conveyor-dashboard-e2e-"))
        self.broker_url = f"sqlite:///{self.dir}/broker.db"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.read_only_url = f"http://127.0.0.1:{free_port()}"
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
        command = [sys.executable, "-m", "conveyor", "-A", "tests.integration.workerapp", *args]
        self.processes[name] = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def start(self) -> None:
        self.spawn("worker", "worker", "-c", "1", "-Q", "default")
        self.spawn("dashboard", "dashboard", "--bind", f"127.0.0.1:{self.port}", "--token", TOKEN)
        read_only_bind = self.read_only_url.removeprefix("http://")
        history = str(self.dir / "read-only-history.sqlite3")  # its own: one indexer a file
        self.spawn(
            "readonly", "dashboard", "--bind", read_only_bind, "--read-only", "--history", history
        )
        wait_until(self.serving, 30, "the dashboard answers", interval=0.1)
        wait_until(lambda: self.serving(self.read_only_url), 30, "read-only one", interval=0.1)

    def serving(self, url: str = "") -> bool:
        try:
            urllib.request.urlopen((url or self.url) + "/", timeout=2)
        except urllib.error.HTTPError as exc:
            return exc.code == 401  # up, and asking for credentials
        except (urllib.error.URLError, OSError):
            return False
        return bool(url)  # the read-only one asks for none

    def output(self) -> str:
        return "\n".join(
            f"--- {name}\n{(self.dir / f'{name}.log').read_text(errors='replace')[-4000:]}"
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
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    running = Fleet()
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
        viewport={"width": 1280, "height": 800},
        http_credentials={"username": "ops", "password": TOKEN},
    )
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # confirmations: yes
    yield page
    context.close()


def dead_letters(client: Conveyor, count: int, queue: str = "parked") -> list[str]:
    """Dead-letter ``count`` add tasks on ``queue`` (no worker consumes it, nor anything
    else there) as a worker would."""
    ids = []
    for i in range(count):
        result = client.send_task("workerapp.add", (i, 100), queue=queue)
        (delivery,) = client.broker.lease([queue], 1, 1.0)
        client.broker.dead_letter(delivery, "worker_lost", "killed during the test")
        ids.append(result.id)
    return ids


def test_refuses_anyone_without_the_token(browser: Any, fleet: Fleet) -> None:
    context = browser.new_context(base_url=fleet.url)
    try:
        answer = context.request.get("/")
        assert answer.status == 401
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    finally:
        context.close()


def test_overview_updates_live_and_queues_page(page: Any, fleet: Fleet, shot: Any) -> None:
    done = [fleet.client.send_task("workerapp.add", (i, i)) for i in range(5)]
    assert [r.get(timeout=20) for r in done] == [0, 2, 4, 6, 8]
    page.goto("/")
    page.wait_for_selector("text=workers up")
    assert page.locator('[data-figure="workers"]').inner_text() == "1"
    before = int(page.locator('[data-figure="ready"]').inner_text())
    # Messages on a queue no worker consumes: the page shows them without a reload.
    for i in range(3):
        fleet.client.send_task("workerapp.add", (i, i), queue="later")
    # expect() polls without evaluating strings, which the strict CSP forbids.
    expect(page.locator('[data-figure="ready"]')).to_have_text(str(before + 3))
    assert page.locator('tr[data-queue="later"]').count() == 1
    shot(page, "dashboard-overview")

    page.click("nav >> text=Queues")
    row = page.locator('tr[data-queue="later"]')
    assert row.locator("td").nth(1).inner_text() == "3"
    with page.expect_navigation():
        row.locator("button", has_text="Purge").click()
    assert fleet.client.broker.stats(["later"])["later"].ready == 0
    # The page after the action: the queue is empty (or gone, if the broker forgets it).
    assert page.locator('tr[data-queue="later"] td:nth-child(2):text-is("3")').count() == 0

    page.click("nav >> text=Workers")
    assert page.locator("tr[data-worker]").count() == 1


def test_replay_dead_letters_runs_them_on_the_worker(page: Any, fleet: Fleet, shot: Any) -> None:
    ids = dead_letters(fleet.client, 4)
    page.goto("/dead?reason=worker_lost")
    for task_id in ids:
        page.wait_for_selector(f'tr[data-dead="{task_id}"]')
    shot(page, "dashboard-dead-letters")
    # Replay two chosen rows: they go back to their queue ("parked", which no worker consumes).
    for task_id in ids[:2]:
        page.check(f'tr[data-dead="{task_id}"] input[name=id]')
    page.click("button:text('Replay selected')")
    page.wait_for_selector(f'tr[data-dead="{ids[2]}"]')
    assert page.locator(f'tr[data-dead="{ids[0]}"]').count() == 0
    assert fleet.client.broker.stats(["parked"])["parked"].ready == 2

    page.click("button:text('Delete all 2 matching')")
    page.wait_for_selector("text=No dead letters match this filter.")
    assert fleet.client.broker.dead_letters(queue="parked") == []

    page.click("nav >> text=Audit log")
    rows = page.locator("table.audit tbody tr")
    assert rows.count() >= 2
    assert "purge-dead" in rows.nth(0).inner_text()
    assert "dead letters matching reason=worker_lost" in rows.nth(0).inner_text()
    assert "replay-dead" in rows.nth(1).inner_text() and "ops (token)" in rows.nth(1).inner_text()
    shot(page, "dashboard-audit")


def test_task_page_and_lookup(page: Any, fleet: Fleet, shot: Any) -> None:
    result = fleet.client.send_task("workerapp.add", (19, 23))
    assert result.get(timeout=20) == 42
    page.goto("/")
    page.fill("header input[name=id]", result.id)
    page.press("header input[name=id]", "Enter")
    page.wait_for_selector(f"h1:has-text('{result.id}')")
    assert page.locator(".state").inner_text() == states.SUCCESS
    assert "42" in page.locator("pre.json").last.inner_text()
    shot(page, "dashboard-task")
    page.goto("/tasks/no-such-task")
    assert "no task with id" in page.locator("p.error").inner_text()


def test_bulk_dead_letter_actions_confirm_the_count(page: Any, fleet: Fleet) -> None:
    ids = dead_letters(fleet.client, 3, "bulk")
    questions: list[str] = []
    page.on("dialog", lambda dialog: questions.append(dialog.message))
    page.goto("/dead?queue=bulk")
    page.wait_for_selector(f'tr[data-dead="{ids[2]}"]')
    # A selection: the question counts the ticked rows.
    page.check(f'tr[data-dead="{ids[0]}"] input[name=id]')
    with page.expect_navigation():
        page.click("button:text('Delete selected')")
    assert questions.pop() == "Delete 1 selected dead letter(s)?"
    assert {d.id for d in fleet.client.broker.dead_letters(queue="bulk")} == set(ids[1:])
    # Everything matching the filter: the question counts the matches.
    with page.expect_navigation():
        page.click("button:text('Replay all 2 matching')")
    assert questions.pop() == "Replay all 2 dead letter(s) matching queue=bulk?"
    assert fleet.client.broker.dead_letters(queue="bulk") == []
    assert fleet.client.broker.stats(["bulk"])["bulk"].ready == 2
    fleet.client.broker.purge(["bulk"])


def test_bad_input_gets_a_clear_page_and_changes_nothing(page: Any, fleet: Fleet) -> None:
    ids = dead_letters(fleet.client, 1, "bad")
    for path, status, says in [
        ("/tasks/no-such-task", 404, "no task with id"),
        ("/tasks?state=SOMETIMES", 400, "no task state"),
        ("/tasks?since=yesterday", 400, "not a time"),
        ("/tasks?size=7", 400, "page size"),
        ("/tasks?before=forged", 400, "malformed page position"),
        ("/dead?search=" + "x" * 300, 400, "longer than"),
        ("/scheduled?queue=" + "q" * 300, 400, "longer than"),
        ("/?range=century", 400, "no range"),
    ]:
        answer = page.goto(path)
        assert answer is not None and answer.status == status, path
        assert says in page.locator("p.error").inner_text(), path
        assert "Traceback" not in page.content()
    page.goto("/dead")
    token = re.search(r'name="token" value="([^"]+)"', page.content())
    assert token
    # A token used once, then replayed with other ids; a forged one: 403, nothing changes.
    unknown = page.request.post("/actions/purge-dead", form={"token": token[1], "id": "nope"})
    assert unknown.status == 200  # an unknown id: nothing to delete, said so in the audit
    for forged in (token[1], "forged.1.signature", ""):
        answer = page.request.post("/actions/purge-dead", form={"token": forged, "id": ids[0]})
        assert answer.status == 403 and "reload the page" in answer.text()
    assert [d.id for d in fleet.client.broker.dead_letters(queue="bad")] == ids
    audit = page.goto("/audit")
    assert audit is not None
    entry = page.locator("table.audit tbody tr").first.inner_text()
    assert "purge-dead" in entry and "dead letters nope" in entry and entry.endswith("0")
    fleet.client.broker.purge_dead(ids)


def test_live_updates_pause_while_the_tab_is_hidden(browser: Any, fleet: Fleet) -> None:
    context = browser.new_context(
        base_url=fleet.url, http_credentials={"username": "ops", "password": TOKEN}
    )
    try:
        watched, observer = context.new_page(), context.new_page()
        streams: list[str] = []
        watched.on("request", lambda r: streams.append(r.url) if "/live?" in r.url else None)
        rendered = []
        for tab in (watched, observer):
            response = tab.goto("/")
            assert response is not None
            rendered += re.findall(r'data-live-digest="([0-9a-f]{16})"', response.text())
            expect(tab.locator("#live[data-streaming]")).to_have_count(1)
        ready = int(watched.locator('[data-figure="ready"]').inner_text())
        assert len(streams) == 1
        # It says what the page shows, so the stream sends the block only once it changes
        # (the fleet's other work may have changed it already: the block then came at once).
        assert f"digest={rendered[0]}" in streams[0]
        # What the browser does when the tab goes to the background.
        watched.evaluate(
            """() => {
                Object.defineProperty(document, "hidden", {configurable: true, get: () => true});
                document.dispatchEvent(new Event("visibilitychange"));
            }"""
        )
        fleet.client.send_task("workerapp.add", (1, 1), queue="hidden")
        # The visible tab shows the new message: a live update was sent meanwhile...
        expect(observer.locator('[data-figure="ready"]')).to_have_text(str(ready + 1))
        # ... and the hidden one, disconnected, did not get it.
        assert watched.locator('[data-figure="ready"]').inner_text() == str(ready)
        watched.evaluate(
            """() => {
                Object.defineProperty(document, "hidden", {configurable: true, get: () => false});
                document.dispatchEvent(new Event("visibilitychange"));
            }"""
        )
        expect(watched.locator('[data-figure="ready"]')).to_have_text(str(ready + 1))
        assert len(streams) == 2  # it reconnected once shown again
    finally:
        context.close()
        fleet.client.broker.purge(["hidden"])


def test_read_only_dashboard_shows_everything_and_changes_nothing(
    browser: Any, page: Any, fleet: Fleet
) -> None:
    ids = dead_letters(fleet.client, 1, "viewed")
    fleet.client.send_task("workerapp.add", (1, 1), queue="viewed", countdown=600)
    viewer = browser.new_context(base_url=fleet.read_only_url)
    try:
        tab = viewer.new_page()
        for path in (
            "/",
            "/queues",
            "/workers",
            "/scheduled",
            "/retries",
            "/periodic",
            "/dead",
            "/tasks",
            f"/tasks/{ids[0]}",
            "/audit",
        ):
            answer = tab.goto(path)
            assert answer is not None and answer.status == 200, path
            expect(tab.locator("header .badge")).to_have_text("read-only")
            assert tab.locator("form[method=post]").count() == 0, path
            assert "/actions/" not in tab.content(), path
        tab.goto("/dead")
        expect(tab.locator(f'tr[data-dead="{ids[0]}"]')).to_have_count(1)
        # A token from the other (writable) dashboard does not open this one.
        page.goto("/dead")
        token = re.search(r'name="token" value="([^"]+)"', page.content())
        assert token
        refused = tab.request.post("/actions/purge-dead", form={"token": token[1], "id": ids[0]})
        assert refused.status == 403 and "read-only" in refused.text()
        assert [d.id for d in fleet.client.broker.dead_letters(queue="viewed")] == ids
        assert fleet.client.broker.stats(["viewed"])["viewed"].delayed == 1
    finally:
        viewer.close()
        fleet.client.broker.purge_dead(ids)
        fleet.client.broker.purge(["viewed"])
