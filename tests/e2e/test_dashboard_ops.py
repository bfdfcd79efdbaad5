"""The dashboard's operations pages in Debian's chromium: ``conveyor dashboard`` and a prefork
``conveyor worker`` as real processes, on SQLite and on Redis. Each page renders, each action
takes effect (on the broker, on the worker) and is audited, and auth refusals hold.

Screenshots go to ``$CONVEYOR_E2E_SCREENSHOTS`` (from the SQLite run) when it is set.
"""

from __future__ import annotations

import json
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

from conveyor import Conveyor
from conveyor.beat.switches import read_switches
from conveyor.brokers.base import Message
from conveyor.message import Envelope, encode_envelope
from tests.conftest import wait_until
from tests.e2e.conftest import ROOT
from tests.integration.workerapp import create_app
from tests.servers import RedisServer, free_port

TOKEN = "e2e-ops-token"
#: A periodic task in the app's settings (the worker and the dashboard read the same ones).
SETTINGS = {
    "broker_lease_timeout": 1.0,
    "broker_sweep_interval": 1.0,
    "beat_schedule": {"hourly-add": {"task": "workerapp.add", "schedule": 3600, "args": [20, 22]}},
}


class Ops:
    """A prefork worker and a dashboard (``--token``) on one broker, and a client app."""

    def __init__(self, backend: str, broker_url: str) -> None:
        self.backend = backend
        self.dir = Path(tempfile.mkdtemp(prefix=f"conveyor-ops-e2e-{backend}-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "CONVEYOR_BROKER_URL": broker_url,
            "WORKERAPP_SETTINGS": json.dumps(SETTINGS),
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("CONVEYOR_RESULT_BACKEND", None)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, IO[bytes]] = {}
        self.client: Conveyor = create_app(broker_url, **SETTINGS)

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
        wait_until(self.node, 30, "the worker announces itself", interval=0.1)

    def node(self) -> str:
        """The worker's node name (``host.pid``), once a process announced itself."""
        names = list(self.client.control.workers())
        return names[0].partition("/")[0] if names else ""

    def serving(self) -> bool:
        try:
            urllib.request.urlopen(self.url + "/", timeout=2)
        except urllib.error.HTTPError as exc:
            return exc.code == 401
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


@pytest.fixture(scope="module", params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def ops(request: pytest.FixtureRequest, chromium_path: str) -> Iterator[Ops]:
    server = None
    db = None
    if request.param == "redis":
        server = RedisServer(appendonly=False)
        server.start()
        url = server.url
    else:
        db = Path(tempfile.mkdtemp(prefix="conveyor-ops-db-"))
        url = f"sqlite:///{db}/broker.db"
    running = Ops(request.param, url)
    try:
        running.start()
        yield running
    finally:
        print(running.output())  # shown when a test failed
        running.stop()
        if server is not None:
            server.cleanup()
        if db is not None:
            shutil.rmtree(db, ignore_errors=True)


@pytest.fixture
def page(browser: Any, ops: Ops) -> Iterator[Any]:
    context = browser.new_context(
        base_url=ops.url,
        viewport={"width": 1280, "height": 800},
        http_credentials={"username": "ops", "password": TOKEN},
    )
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # confirmations: yes
    yield page
    context.close()


@pytest.fixture
def snap(shot: Any, ops: Ops) -> Any:
    def save(page: Any, name: str) -> None:
        if ops.backend == "sqlite":
            shot(page, name)

    return save


def audit_rows(page: Any) -> list[str]:
    page.goto("/audit")
    return page.locator("table.audit tbody tr").all_inner_texts()


def test_queues_pause_resume_and_purge(page: Any, ops: Ops, snap: Any) -> None:
    client = ops.client
    # Queue "later" has no worker: a dead letter of priority 4 (made as a worker would),
    # ready ones of 9 and 1, a delayed one of 7.
    client.broker.publish([Message("dead-in-later", "later", b"{}", 4)])
    (doomed,) = client.broker.lease(["later"], 1, 5.0)
    client.broker.dead_letter(doomed, "rejected", "by the test")
    for priority in (9, 9, 1):
        client.send_task("workerapp.add", (1, 1), queue="later", priority=priority)
    client.send_task("workerapp.add", (1, 2), queue="later", priority=7, countdown=600)
    page.goto("/queues")
    split = page.locator('tr[data-queue="later"] table.by-priority')
    # one row per priority with messages, highest first: ready, delayed, leased, dead
    expect(split.locator("tbody tr")).to_have_count(4)
    assert split.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.innerText.trim()))"
    ) == [
        ["p9", "2", "0", "0", "0"],
        ["p7", "0", "1", "0", "0"],
        ["p4", "0", "0", "0", "1"],
        ["p1", "1", "0", "0", "0"],
    ]

    with page.expect_navigation():
        page.locator('tr[data-queue="default"] button', has_text="Pause").click()
    expect(page.locator('tr[data-queue="default"] [data-state]')).to_have_text("paused")
    assert client.control.paused_queues() == ["default"]
    held = client.send_task("workerapp.add", (2, 3))
    snap(page, "dashboard-queues")

    # Resume a selection (chosen in the live table): the held task runs on the worker.
    page.check('tr[data-queue="default"] input[name=id]')
    with page.expect_navigation():
        page.click("button:text('Resume selected')")
    assert client.control.paused_queues() == []
    assert held.get(timeout=20) == 5

    # Purge asks with the count first.
    questions: list[str] = []
    page.on("dialog", lambda dialog: questions.append(dialog.message))
    with page.expect_navigation():
        page.locator('tr[data-queue="later"] button', has_text="Purge").click()
    assert questions == ["Delete the 4 waiting message(s) of queue later?"]
    later = client.broker.stats(["later"])["later"]
    assert (later.ready, later.delayed, later.dead) == (0, 0, 1)
    rows = audit_rows(page)
    assert "purge-queue" in rows[0] and "queue later" in rows[0] and rows[0].endswith("4")
    assert "resume-queue" in rows[1] and "pause-queue" in rows[2]


def test_scheduled_run_now_and_cancel_matching(page: Any, ops: Ops, snap: Any) -> None:
    client = ops.client
    soon = client.send_task("workerapp.add", (4, 5), countdown=600)
    later = [
        client.send_task("workerapp.add", (i, 0), {}, countdown=900 + i, queue="later")
        for i in range(2)
    ]
    page.goto("/scheduled")
    for result in (soon, *later):
        page.wait_for_selector(f'tr[data-scheduled="{result.id}"]')
    expect(page.locator('[data-figure="scheduled-count"]')).to_have_text("3")
    snap(page, "dashboard-scheduled")

    page.check(f'tr[data-scheduled="{soon.id}"] input[name=id]')
    with page.expect_navigation():
        page.click("button:text('Run selected now')")
    assert soon.get(timeout=20) == 9  # ran on the worker, ten minutes early

    page.goto("/scheduled?queue=later")
    expect(page.locator('[data-figure="scheduled-count"]')).to_have_text("2")
    with page.expect_navigation():
        page.click("button:text('Cancel: all 2 matching')")
    page.wait_for_selector("text=No delayed messages match this filter.")
    assert client.broker.scheduled() == []
    rows = audit_rows(page)
    assert "cancel-scheduled" in rows[0] and "matching queue=later" in rows[0]
    assert "run-scheduled" in rows[1] and soon.id in rows[1]


def test_retries_page_runs_a_retry_now(page: Any, ops: Ops, snap: Any) -> None:
    client = ops.client
    # What a worker publishes when a task asks for a retry: the same call, retries + 1, later.
    body = encode_envelope(
        Envelope(id="retry-e2e-" + ops.backend, task="workerapp.add", args=[6, 7], retries=1)
    )
    client.broker.publish([Message("retry-e2e-" + ops.backend, "default", body, countdown=600)])
    plain = client.send_task("workerapp.add", (1, 1), countdown=600)
    page.goto("/retries")
    page.wait_for_selector(f'tr[data-scheduled="retry-e2e-{ops.backend}"]')
    assert page.locator(f'tr[data-scheduled="{plain.id}"]').count() == 0
    snap(page, "dashboard-retries")
    with page.expect_navigation():
        page.click("button:text('Run now: all 1 matching')")
    assert client.AsyncResult("retry-e2e-" + ops.backend).get(timeout=20) == 13
    assert [s.id for s in client.broker.scheduled()] == [plain.id]
    client.broker.cancel_scheduled([plain.id])
    assert "run-retries" in audit_rows(page)[0]


def test_periodic_switch_and_run_now(page: Any, ops: Ops, snap: Any) -> None:
    page.goto("/periodic")
    row = page.locator('tr[data-periodic="hourly-add"]')
    expect(row.locator("[data-state]")).to_contain_text("enabled")
    expect(row).to_contain_text("workerapp.add(20, 22)")
    with page.expect_navigation():
        row.locator("button", has_text="Disable").click()
    expect(page.locator('tr[data-periodic="hourly-add"] [data-state]')).to_contain_text("disabled")
    assert read_switches(ops.client.kv) == {"hourly-add": False}
    with page.expect_navigation():
        page.locator('tr[data-periodic="hourly-add"] button', has_text="Enable").click()
    assert read_switches(ops.client.kv) == {}
    snap(page, "dashboard-periodic")

    with page.expect_navigation():
        page.locator('tr[data-periodic="hourly-add"] button', has_text="Run now").click()
    rows = audit_rows(page)
    assert "run-periodic" in rows[0]
    match = re.search(r"sent as ([0-9a-f-]{36})", rows[0])
    assert match, rows[0]
    assert ops.client.AsyncResult(match.group(1)).get(timeout=20) == 42
    assert "enable-periodic" in rows[1] and "disable-periodic" in rows[2]


def test_auth_refusals_hold(browser: Any, page: Any, ops: Ops) -> None:
    anonymous = browser.new_context(base_url=ops.url)
    try:
        assert anonymous.request.get("/workers").status == 401
        assert anonymous.request.post("/actions/pause-queue", form={"queue": "x"}).status == 401
    finally:
        anonymous.close()
    page.goto("/queues")
    forged = page.request.post(
        "/actions/pause-queue", form={"token": "forged.signature", "queue": "default"}
    )
    assert forged.status == 403 and "reload the page" in forged.text()
    # A real token, used twice: the second use is refused.
    token = re.search(r'name="token" value="([^"]+)"', page.content())
    assert token
    first = page.request.post("/actions/pause-queue", form={"token": token[1], "queue": "q1"})
    again = page.request.post("/actions/pause-queue", form={"token": token[1], "queue": "q2"})
    assert first.status == 200 and again.status == 403
    assert ops.client.control.paused_queues() == ["q1"]
    ops.client.control.resume_queue("q1")


def test_workers_running_tasks_pool_consumers_and_shutdown(page: Any, ops: Ops, snap: Any) -> None:
    client, node = ops.client, ops.node()
    flag = ops.dir / "sleep.txt"
    running = client.send_task("workerapp.sleep", (str(flag), 4.0))
    page.goto("/workers")
    page.wait_for_selector(f'tr[data-running="{running.id}"]')  # live: no reload needed
    expect(page.locator(f'tr[data-running="{running.id}"]')).to_contain_text("workerapp.sleep")
    snap(page, "dashboard-workers")

    with page.expect_navigation():
        page.click("button:text('Grow pool')")
    wait_until(lambda: len(client.control.workers()) == 2, 20, "a second process")
    expect(page.locator("tr[data-worker]")).to_have_count(2)  # live
    with page.expect_navigation():
        page.click("button:text('Shrink pool')")
    wait_until(lambda: len(client.control.workers()) == 1, 30, "back to one process")

    page.fill("input[name=queue]", "extra")
    with page.expect_navigation():
        page.click("button:text('Add consumer')")
    assert client.send_task("workerapp.add", (1, 2), queue="extra").get(timeout=20) == 3
    page.fill("input[name=queue]", "extra")
    with page.expect_navigation():
        page.click("button:text('Cancel consumer')")
    rows = audit_rows(page)
    assert "cancel-consumer" in rows[0] and "no longer consuming from extra" in rows[0]
    assert "add-consumer" in rows[1] and "pool-shrink" in rows[2] and "pool-grow" in rows[3]
    assert running.get(timeout=20) is not None

    # An unknown worker: a clear 4xx page, nothing sent.
    page.goto("/workers")
    token = re.search(r'name="token" value="([^"]+)"', page.content())
    assert token
    gone = page.request.post("/actions/shutdown-worker", form={"token": token[1], "worker": "x.1"})
    assert gone.status == 404 and "no live worker named" in gone.text()

    page.goto("/workers")
    with page.expect_navigation():
        page.click("button:text('Shut down')")
    ops.processes["worker"].wait(30)
    rows = audit_rows(page)
    assert "shutdown-worker" in rows[0] and node in rows[0]
