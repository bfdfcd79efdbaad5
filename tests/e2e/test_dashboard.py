"""The dashboard in Debian's chromium: ``conveyor dashboard`` and ``conveyor worker`` as real
processes on a SQLite broker in a temporary directory.

Screenshots go to ``$CONVEYOR_E2E_SCREENSHOTS`` (``dashboard-*.png``) when it is set.
"""

from __future__ import annotations

import os
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


def dead_letters(client: Conveyor, count: int) -> list[str]:
    """Dead-letter ``count`` add tasks on queue ``parked`` (no worker consumes it) as a worker
    would."""
    ids = []
    for i in range(count):
        result = client.send_task("workerapp.add", (i, 100), queue="parked")
        (delivery,) = client.broker.lease(["parked"], 1, 1.0)
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
    shot(page, "dashboard-queues")
    with page.expect_navigation():
        row.locator("button", has_text="Purge").click()
    assert fleet.client.broker.stats(["later"])["later"].ready == 0
    # The page after the action: the queue is empty (or gone, if the broker forgets it).
    assert page.locator('tr[data-queue="later"] td:nth-child(2):text-is("3")').count() == 0

    page.click("nav >> text=Workers")
    assert page.locator("tr[data-worker]").count() == 1
    shot(page, "dashboard-workers")


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
