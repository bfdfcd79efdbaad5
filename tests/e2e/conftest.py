"""Browser tests of the QuickPublisher example (examples/quick_publisher).

The site runs as it does in the demo, in its own processes: ``manage.py runserver`` on a free
loopback port and a worker with the beat scheduler embedded, on a SQLite broker in a temporary
directory. Debian's chromium, driven by Playwright, uses it like a visitor would. Django is
never configured in this process (other tests configure their own project).

Screenshots of each page go to ``$CONVEYOR_E2E_SCREENSHOTS`` when it is set (the README's are
made with ``CONVEYOR_E2E_SCREENSHOTS=docs/screenshots``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "examples" / "quick_publisher"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: The demo data's accounts (manage.py load_demo_data).
STAFF = ("staff@quickpublisher.dev", "demo1234")
ALICE = ("alice@example.com", "demo1234")


class Site:
    """The example site in subprocesses: web server, and worker with embedded beat."""

    def __init__(self, *, broker_url: str | None = None) -> None:
        self.var = Path(tempfile.mkdtemp(prefix="quick-publisher-e2e-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "quick_publisher.settings.e2e",
            "QUICK_PUBLISHER_VAR": str(self.var),
            "SITE_URL": self.url,
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("CONVEYOR_RESULT_BACKEND", None)
        if broker_url:
            self.env["CONVEYOR_BROKER_URL"] = broker_url
        else:
            self.env.pop("CONVEYOR_BROKER_URL", None)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=PROJECT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def _spawn(self, name: str, *args: str) -> None:
        log = self._logs[name] = open(self.var / f"{name}.log", "wb")  # noqa: SIM115
        self.processes[name] = subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=PROJECT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def start(self, timeout: float = 60.0) -> None:
        self.manage("migrate", "--no-input", "-v", "0")
        self.manage("load_demo_data")
        self._spawn("worker", "conveyor_worker", "-B", "--loglevel", "INFO")
        self._spawn("web", "runserver", f"127.0.0.1:{self.port}", "--noreload")
        deadline = time.monotonic() + timeout
        while not self._serving():
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited early:\n{self.log(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the site did not start in {timeout} s:\n{self.logs()}")
            time.sleep(0.1)  # polling interval of a bounded wait

    def _serving(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log(self, name: str) -> str:
        path = self.var / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self, tail: int = 60) -> str:
        parts = []
        for name in self.processes:
            lines = self.log(name).splitlines()[-tail:]
            parts.append(f"--- {name} (last {len(lines)} lines) ---\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # what Ctrl-C does: a warm shutdown
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self._logs.values():
            log.close()
        shutil.rmtree(self.var, ignore_errors=True)


_sites: list[Site] = []


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is not installed (scripts/test installs it)")
    return CHROMIUM


@pytest.fixture(scope="session")
def site() -> Iterator[Site]:
    """The site on the default broker (SQLite), shared by the tests of the session."""
    running = Site()
    _sites.append(running)
    try:
        running.start()
        yield running
    finally:
        running.stop()
        _sites.remove(running)


# Package scope, not session: Playwright's sync API keeps an event loop running on the main
# thread while it is open, which would break asyncio.run() in every test collected after e2e.
@pytest.fixture(scope="package")
def browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def new_page(browser: Any, site: Site) -> Iterator[Any]:
    """Open a page in a fresh browser context (no cookies): ``new_page()``."""
    contexts = []

    def make() -> Any:
        context = browser.new_context(
            base_url=site.url, viewport={"width": 1180, "height": 820}, accept_downloads=True
        )
        context.set_default_timeout(20_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page: Any) -> Any:
    return new_page()


@pytest.fixture
def shot() -> Any:
    """``shot(page, "name")`` saves docs-ready screenshots when CONVEYOR_E2E_SCREENSHOTS is set."""
    target = os.environ.get("CONVEYOR_E2E_SCREENSHOTS")

    def save(page: Any, name: str) -> None:
        if target:
            directory = Path(target) if Path(target).is_absolute() else ROOT / target
            directory.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(directory / f"{name}.png"), full_page=True)

    return save


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and _sites:
        for running in _sites:
            report.sections.append(("quick_publisher site logs", running.logs()))
    return report
