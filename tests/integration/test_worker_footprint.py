"""What a real ``conveyor worker`` on Redis holds in memory: only the modules it uses, and
the supervisor's objects frozen before the fork (a full collection in a child would otherwise
write to every inherited object and copy its page), and nothing a child needs to lease, run
and settle left to import after the fork. The task reports from inside the child, which was
forked from the supervisor, so it sees both processes' imports."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from tests.helpers import redis_fixture
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]

footprint_redis = redis_fixture(appendonly=False)

APP = """
import gc
import os
import sys

from conveyor import Conveyor

app = Conveyor("footprint")
at_fork: set[str] = set()
os.register_at_fork(after_in_child=lambda: at_fork.update(sys.modules))


@app.task(name="footprint.loaded")
def loaded() -> dict:
    return {
        "modules": sorted(sys.modules),
        "frozen": gc.get_freeze_count(),
        "after_fork": sorted(set(sys.modules) - at_fork),
    }
"""

#: Loaded only by the features that need them (none is configured here): the dashboard,
#: Django, tracing and error reporting, Prometheus (``--metrics-port``), rich (tables of
#: the inspection commands), the other brokers.
NOT_LOADED = (
    "django",
    "starlette",
    "jinja2",
    "uvicorn",
    "sentry_sdk",
    "prometheus_client",
    "rich",
    "http.server",
    "wsgiref",
    "psycopg",
    "amqp",
    "conveyor.dashboard",
    "conveyor.contrib.django",
    "conveyor.integrations.otel",
    "conveyor.integrations.sentry",
    "conveyor.metrics.server",
    "conveyor.brokers.sqlite",
    "conveyor.brokers.postgres",
    "conveyor.brokers.amqp",
)


@pytest.fixture
def worker_modules(footprint_redis: RedisServer, tmp_path: Path) -> Iterator[dict[str, object]]:
    (tmp_path / "footprintapp.py").write_text(APP)
    env = {
        k: v for k, v in os.environ.items() if k not in ("CONVEYOR_APP", "DJANGO_SETTINGS_MODULE")
    }
    env["CONVEYOR_BROKER_URL"] = footprint_redis.url
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "-A", "footprintapp", "-c", "1"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = Conveyor("footprint", broker=footprint_redis.url)
    try:
        reply = client.send_task("footprint.loaded").get(timeout=60)
        assert isinstance(reply, dict)
        yield reply
    finally:
        client.close()
        worker.terminate()
        worker.wait(30)
        log.close()


@pytest.mark.redis
def test_a_redis_worker_loads_no_optional_feature_and_freezes_before_forking(
    worker_modules: dict[str, object],
) -> None:
    modules = worker_modules["modules"]
    assert isinstance(modules, list)
    loaded = [m for m in modules if any(m == n or m.startswith(f"{n}.") for n in NOT_LOADED)]
    assert loaded == []
    assert "conveyor.brokers.redis" in modules  # it did look where the worker runs
    frozen = worker_modules["frozen"]
    assert isinstance(frozen, int) and frozen > 10_000


@pytest.mark.redis
def test_a_forked_child_imports_nothing_to_lease_run_and_store_a_result(
    worker_modules: dict[str, object],
) -> None:
    """What a child imports after the fork is a private copy in each child: the supervisor
    builds the settlement (and with it the result store) before forking, so their modules
    are shared."""
    assert worker_modules["after_fork"] == []
