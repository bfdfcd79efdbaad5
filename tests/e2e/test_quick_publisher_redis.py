"""The same site on Redis: only CONVEYOR_BROKER_URL changes (results follow the broker)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.servers import RedisServer

from .conftest import STAFF, Site
from .test_quick_publisher import login, open_mail, unique_email

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def redis_site(chromium_path: str) -> Iterator[Site]:
    server = RedisServer(appendonly=False)
    server.start()
    running = Site(broker_url=server.url)
    try:
        running.start()
        yield running
    finally:
        running.stop()
        server.cleanup()


@pytest.fixture
def redis_page(browser: Any, redis_site: Site) -> Iterator[Any]:
    context = browser.new_context(base_url=redis_site.url, accept_downloads=True)
    context.set_default_timeout(20_000)
    yield context.new_page()
    context.close()


def test_feedback_and_annual_report_on_redis(redis_page: Any, redis_site: Site) -> None:
    page = redis_page
    email = unique_email("redis")
    page.goto("/feedback/")
    page.get_by_label("Name").fill("Rita")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Message").fill("Works on Redis too.")
    page.get_by_role("button", name="Send feedback").click()
    expect(page.get_by_test_id("feedback-thanks")).to_be_visible()
    open_mail(page, email, "Thank you for your feedback!")
    # The web server queued the task and the worker ran it through Redis: no SQLite broker.
    assert not (redis_site.var / "conveyor.sqlite3").exists()

    login(page, *STAFF)
    page.goto("/reports/")
    page.get_by_label("Year").fill(str(date.today().year))
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function(
        "() => { const p = +document.getElementById('percent').textContent;"
        " return p > 0 && p < 100; }"
    )
    expect(page.get_by_test_id("download")).to_be_visible(timeout=30_000)
