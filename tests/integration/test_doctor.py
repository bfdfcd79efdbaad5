"""``conveyor doctor`` against real servers and real workers (issue 13, item 7): every finding
comes with a fix, the exit status is 1 when anything is a warning or an error, ``--json``
parses, and passwords and signing keys never appear."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from conveyor.signing import key_ids
from tests.integration import test_worker_processes as processes
from tests.integration.test_cli import conveyor
from tests.integration.test_worker_processes import Harness, wait_for
from tests.servers import RedisServer

redis_server = processes.redis_server
harness_factory = processes.harness_factory
harness = processes.harness


@pytest.fixture
def backend() -> str:
    """What workers announce is read the same way on every broker: SQLite is enough here
    (each CLI run costs a second or two)."""
    return "sqlite"


KEY_A = "doctor-key-a-" + "a" * 40
KEY_B = "doctor-key-b-" + "b" * 40


def doctor(harness: Harness, **settings: Any) -> tuple[int, list[dict[str, str]]]:
    env = {"DOCTORAPP_SETTINGS": json.dumps(settings)}
    done = conveyor(harness, "-A", "tests.integration.doctorapp", "doctor", "--json", env=env)
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] == (done.returncode == 0)
    for finding in report["findings"]:
        if finding["level"] in ("warning", "error"):
            assert finding["fix"], finding  # every problem says how to fix it
    return done.returncode, report["findings"]


def levels(findings: list[dict[str, str]], check: str, text: str = "") -> list[str]:
    return [f["level"] for f in findings if f["check"] == check and text in f["message"]]


def test_workers_queues_tasks_and_clocks(harness: Harness) -> None:
    harness.worker("-c", "1", "-Q", "default")
    wait_for(lambda: harness.client.kv.values("worker:"), 30, "the worker's announcement")
    status, findings = doctor(harness)
    assert status == 1
    assert levels(findings, "tasks", "'workerapp.unregistered'") == ["error"]
    assert not levels(findings, "tasks", "'workerapp.add'")  # the worker has it
    assert levels(findings, "queues", "'reports' has no consumer") == ["warning"]
    assert levels(findings, "queues", "'default': consumed by") == ["ok"]
    assert set(levels(findings, "clock")) == {"ok"} and len(levels(findings, "clock")) == 2

    # A worker on another host whose clock is 40 s ahead announces itself like this.
    now = harness.client.broker.time()
    skewed = {"hostname": "far", "queues": ["default"], "seen_at": now + 40, "broker_time": now}
    harness.client.kv.set_value("worker:far", json.dumps(skewed).encode(), 60)
    harness.client.send_task("workerapp.reports", (), queue="reports")
    _, findings = doctor(harness)
    assert levels(findings, "clock", "worker far: clock 40.0 s ahead") == ["error"]
    assert levels(findings, "queues", "'reports' has no consumer (1 message") == ["error"]


def test_signing_configuration_across_workers(harness_factory: Any) -> None:
    harness: Harness = harness_factory(message_signing_keys=[KEY_A])  # the workers' keys
    harness.worker("-c", "1")
    wait_for(lambda: harness.client.kv.values("worker:"), 30, "the worker's announcement")
    _, findings = doctor(harness, message_signing_keys=[KEY_A])
    assert levels(findings, "signing") == ["ok"]
    _, findings = doctor(harness, message_signing_keys=[KEY_B])
    assert levels(findings, "signing", "does not accept the key this app signs with") == ["error"]
    _, findings = doctor(harness, message_signing_keys=[])
    assert levels(findings, "signing", "requires signed messages") == ["error"]
    _, findings = doctor(harness, message_signing_keys=[KEY_B, KEY_A])
    assert levels(findings, "signing", "does not accept") == ["error"]  # B signs; worker: A
    text = conveyor(
        harness,
        "-A",
        "tests.integration.doctorapp",
        "doctor",
        env={"DOCTORAPP_SETTINGS": json.dumps({"message_signing_keys": [KEY_B]})},
    )
    assert KEY_A not in text.stdout + text.stderr and KEY_B not in text.stdout + text.stderr
    assert "fix:" in text.stdout and text.returncode == 1
    banner = harness.workers[0].output()  # the worker names its key by id, never by value
    assert f"signing:      key id {key_ids([KEY_A])[0]} signs" in banner
    assert KEY_A not in banner


def test_settings_findings(harness: Harness) -> None:
    _, findings = doctor(harness, result_expires=60, enable_utc=False, task_time_limit=120)
    assert levels(findings, "results", "result_expires is 60 s") == ["warning"]
    assert levels(findings, "results", "'workerapp.add' may run 120 s") == ["warning"]
    assert levels(findings, "timezone", "enable_utc is False") == ["warning"]
    _, findings = doctor(harness, result_expires=None)
    assert levels(findings, "results") == ["info"]


# -- storage ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def password_redis() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=False, password="s3cret-doctor-pass")
    server.start()
    yield server
    server.stop()
    server.cleanup()


@pytest.mark.redis
def test_redis_memory_policy_and_persistence(password_redis: RedisServer, tmp_path: Path) -> None:
    harness = Harness(password_redis.url, {}, tmp_path)
    try:
        admin = redis.Redis.from_url(password_redis.url)
        admin.config_set("maxmemory", "100mb")
        admin.config_set("maxmemory-policy", "allkeys-lru")
        done = conveyor(harness, "-A", "tests.integration.doctorapp", "doctor")
        assert done.returncode == 1
        assert "s3cret-doctor-pass" not in done.stdout + done.stderr
        _, findings = doctor(harness)
        assert levels(findings, "broker: redis", "maxmemory-policy is allkeys-lru") == ["error"]
        assert levels(findings, "broker: redis", "appendonly is off") == ["warning"]

        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("appendonly", "yes")
        wait_for(lambda: admin.info("persistence")["aof_rewrite_in_progress"] == 0, 20, "AOF")
        _, findings = doctor(harness)
        assert set(levels(findings, "broker: redis")) == {"ok"}
        admin.close()
    finally:
        harness.close()


def test_sqlite_location_and_journal_mode(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()  # journal: delete
    harness = Harness(f"sqlite:///{path}", {}, tmp_path)
    try:
        env = {"CONVEYOR_BROKER_URL": f"sqlite:///{path}"}
        done = conveyor(harness, "-A", "tests.integration.doctorapp", "doctor", "--json", env=env)
        findings = json.loads(done.stdout)["findings"]
        assert done.returncode == 1
        assert levels(findings, "broker: sqlite", "not WAL") == ["error"]
        assert levels(findings, "broker: sqlite", "temporary storage") == ["warning"]
        relative = {"CONVEYOR_BROKER_URL": "sqlite:///relative.db"}
        done = conveyor(
            harness,
            "-A",
            "tests.integration.doctorapp",
            "doctor",
            "--json",
            env=relative,
            cwd=tmp_path,
        )
        findings = json.loads(done.stdout)["findings"]
        assert levels(findings, "broker: sqlite", "relative to the current directory") == [
            "warning"
        ]
    finally:
        harness.close()
