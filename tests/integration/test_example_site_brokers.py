"""The QuickPublisher example site (examples/quick_publisher) on each server broker with one
URL (``CONVEYOR_BROKER_URL``), as ``scripts/demo`` runs it: a real ``manage.py
conveyor_worker`` process, the site's own sign-up view driven by Django's test client.

The sign-up queues its verification email inside ``transaction.atomic()``: on PostgreSQL in
the site's own database that is transactional enqueue; elsewhere it waits for the commit.
Either way a sign-up that rolls back never sends an email, and one that commits sends one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "examples" / "quick_publisher"

# Run by `manage.py shell -c` in the site's settings (Django is set up once per process).
SCENARIO = """
import re, time
from django.db import transaction
from django.test import Client
from accounts.models import User
from outbox.models import OutboxMessage

def wait_for_mail(to, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(OutboxMessage.objects.filter(to=to))
        if found:
            return found
        time.sleep(0.1)  # polling the outbox table the worker writes to
    raise SystemExit(f"no mail to {to} within {timeout} s")

# A sign-up whose transaction rolls back after the account (and its email task) were written.
try:
    with transaction.atomic():
        User.objects.create_user("lost@example.com", "a-long-passphrase-42", full_name="Lost")
        raise RuntimeError("the sign-up failed after the account was saved")
except RuntimeError:
    pass

client = Client(HTTP_HOST="localhost")  # the demo settings allow loopback hosts only
page = client.post("/accounts/signup/", {
    "email": "grace@example.com", "full_name": "Grace Hopper",
    "password1": "a-long-passphrase-42", "password2": "a-long-passphrase-42",
}, follow=True)
assert b"Check your email" in page.content, page.content[:500]
[message] = wait_for_mail("grace@example.com")
link = re.search(r"/accounts/verify/[0-9a-f-]+/", message.body).group(0)
assert b"Thanks for confirming" in client.get(link).content
assert User.objects.get(email="grace@example.com").is_verified
# The rolled-back sign-up was queued before the committed one and the queue is FIFO: had its
# task survived, its mail would be there by now.
assert not User.objects.filter(email="lost@example.com").exists()
assert not OutboxMessage.objects.filter(to="lost@example.com").exists()
print("SIGNUP OK")
"""


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("amqp", marks=pytest.mark.amqp),
        pytest.param("redis", marks=[pytest.mark.redis, pytest.mark.slow]),
    ]
)
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        database = f"qp{uuid.uuid4().hex[:10]}"
        server.sql(f"CREATE DATABASE {database}", database="postgres")
        yield server.url(database=database)
    elif request.param == "amqp":
        yield request.getfixturevalue("rabbit_server").url
    else:
        server = RedisServer(appendonly=False)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


def test_sign_up_flow_on_the_broker(broker_url: str, tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CONVEYOR_", "DJANGO_", "CELERY_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="quick_publisher.settings.demo",
        QUICK_PUBLISHER_VAR=str(tmp_path),
        CONVEYOR_BROKER_URL=broker_url,
        PYTHONPATH=os.pathsep.join([str(SITE), str(ROOT)]),
    )

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=SITE,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    migrated = manage("migrate", "--no-input", "-v", "0")
    assert migrated.returncode == 0, migrated.stderr
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "conveyor_worker", "-c", "1", "-l", "info"],
            cwd=SITE,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        done = manage("shell", "-c", SCENARIO)
        assert done.returncode == 0, done.stdout + done.stderr + log.read_text()
        assert "SIGNUP OK" in done.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
    text = log.read_text()
    assert "accounts.tasks.send_verification_email" in text, text
    assert "Traceback" not in text, text
