"""Django on PostgreSQL with the broker in the same database: ``delay()`` inside
``transaction.atomic()`` is part of the transaction (rolled back with the ORM writes,
invisible to workers until commit), and ``delay_on_commit()`` still waits for the commit.

Django is configured once per test process (on SQLite for the other tests), so the scenario
runs in a process of its own with the test project on PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.pg_server import PostgresServer

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
MANAGE = ROOT / "tests" / "django" / "manage.py"

SCENARIO = """
import json
from django.db import connection, transaction
from conveyor.brokers import BrokerOptions, create_broker
from conveyor.testing import TestWorker
from tests.django.testproj.conveyor import app
from tests.django.testproj.shop.models import Order
from tests.django.testproj.shop.tasks import add, confirm_order

peer = create_broker(app.conf.broker_url, BrokerOptions(key_prefix=app.key_prefix))

def ready():
    return sum(s.ready for s in app.broker.stats().values())

out = {"pooled": connection.pool is not None}
sent = []
try:
    with transaction.atomic():
        order = Order.objects.create(item="rolled back")
        sent.append(confirm_order.delay(order.pk))
        out["ready_inside_rollback"] = ready()  # another connection: sees nothing
        with connection.cursor() as cursor:  # the transaction's own connection sees it
            cursor.execute("SELECT count(*) FROM conveyor.conveyor_messages")
            out["own_inside_rollback"] = cursor.fetchone()[0]
        raise RuntimeError("sign-up failed")
except RuntimeError:
    pass
out["ready_after_rollback"] = ready()
with transaction.atomic():
    order = Order.objects.create(item="committed")
    sent.append(confirm_order.delay(order.pk))
    with transaction.atomic():  # a savepoint that rolls back takes its task with it
        inner = Order.objects.create(item="savepoint")
        sent.append(confirm_order.delay(inner.pk))
        transaction.set_rollback(True)
    out["peer_leased_inside"] = len(peer.lease(["default"], 10, 0.2))
out["ready_after_commit"] = ready()
with transaction.atomic():
    order = Order.objects.create(item="on commit")
    sent.append(confirm_order.delay_on_commit(order.pk))
    out["ready_before_on_commit"] = ready()
out["ready_after_on_commit"] = ready()
try:
    with transaction.atomic():  # on_commit=False: sent now, on a connection of its own
        now = add.apply_async((1, 2), on_commit=False)
        raise RuntimeError("rolled back")
except RuntimeError:
    pass
out["ready_after_sent_now"] = ready()
with TestWorker(app) as worker:
    worker.run_until_idle()
out["sent_now"] = now.state
out["states"] = [r.state for r in sent]
out["orders"] = list(Order.objects.order_by("pk").values_list("item", "confirmations"))
peer.close()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.parametrize("django_pool", [False, True], ids=["connection", "django-pool"])
def test_delay_in_atomic_is_part_of_the_transaction(
    postgres_server: PostgresServer, django_pool: bool
) -> None:
    """Also with Django's connection pool (DATABASES OPTIONS {"pool": True})."""
    database = f"dj{uuid.uuid4().hex[:10]}"
    postgres_server.sql(f"CREATE DATABASE {database}", database="postgres")
    url = postgres_server.url(database=database)
    env = dict(os.environ)
    env.update(
        TESTPROJ_DATABASE_URL=url,
        TESTPROJ_BROKER=url,
        TESTPROJ_RESULTS=url,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    if django_pool:
        env["TESTPROJ_DATABASE_POOL"] = "1"
    env.pop("DJANGO_SETTINGS_MODULE", None)
    run = [sys.executable, str(MANAGE)]
    subprocess.run([*run, "migrate", "-v0"], env=env, cwd=ROOT, check=True, timeout=120)
    done = subprocess.run(
        [*run, "shell", "-c", SCENARIO],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [line] = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    out = json.loads(line.removeprefix("RESULT "))
    assert out["pooled"] is django_pool
    # Inside the transaction the task is there for that transaction alone.
    assert out["own_inside_rollback"] == 1
    assert out["ready_inside_rollback"] == 0
    assert out["ready_after_rollback"] == 0
    assert out["peer_leased_inside"] == 0, "a worker saw an uncommitted task"
    assert out["ready_after_commit"] == 1
    assert out["ready_before_on_commit"] == 1  # delay_on_commit waits for the commit
    assert out["ready_after_on_commit"] == 2
    assert out["ready_after_sent_now"] == 3
    assert out["sent_now"] == "SUCCESS"
    assert out["states"] == ["PENDING", "SUCCESS", "PENDING", "SUCCESS"]
    assert out["orders"] == [["committed", 1], ["on commit", 1]]
