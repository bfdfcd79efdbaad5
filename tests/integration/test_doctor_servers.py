"""``conveyor doctor``'s checks of PostgreSQL and RabbitMQ servers (issue 13, item 7), against
the suite's real servers, each check also against a deliberately misconfigured server, table,
role, queue or app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import amqp
import psycopg
import pytest

from conveyor import Conveyor
from conveyor.brokers.postgres.schema import MIGRATIONS
from conveyor.doctor import Finding, diagnose
from conveyor.doctor.postgres import postgres_findings
from conveyor.doctor.rabbitmq import default_consumer_timeout, parse_version
from tests.pg_server import PostgresServer
from tests.rabbit_server import RabbitServer

ROOT = Path(__file__).resolve().parents[2]


def levels(findings: list[Finding], check: str, text: str = "") -> list[str]:
    return [str(f.level) for f in findings if f.check == check and text in f.message]


def problems_have_fixes(findings: list[Finding]) -> None:
    for finding in findings:
        if finding.level.is_problem:
            assert finding.fix, finding


# -- PostgreSQL ------------------------------------------------------------------------------
PG = "broker: postgresql"


@pytest.fixture
def pg_app(postgres_server: PostgresServer) -> Iterator[Conveyor]:
    schema = f"d{uuid.uuid4().hex[:10]}"
    app = Conveyor("doc", broker=f"{postgres_server.url()}?schema={schema}", set_as_default=False)
    yield app
    app.close()


@pytest.mark.postgres
def test_postgres_schema_version_durability_and_autovacuum(
    pg_app: Conveyor, postgres_server: PostgresServer
) -> None:
    schema = pg_app.broker.db.schema  # type: ignore[attr-defined]  # a PostgresBroker
    findings = diagnose(pg_app)
    assert levels(findings, "clock", "this host: clock within") == ["ok"]  # the server's clock
    assert levels(findings, PG, "no broker tables yet") == ["info"]
    # The suite's server runs without fsync (speed): exactly what the check must catch.
    assert levels(findings, PG, "fsync is off") == ["error"]

    pg_app.broker.stats()  # creates the tables
    findings = diagnose(pg_app)
    version = len(MIGRATIONS)
    assert levels(findings, PG, f"broker tables at version {version}") == ["ok"]
    assert levels(findings, PG, "autovacuum on") == ["ok"]
    problems_have_fixes(findings)

    postgres_server.sql(f"UPDATE {schema}.conveyor_meta SET version = 7")
    postgres_server.sql(f"ALTER TABLE {schema}.conveyor_messages SET (autovacuum_enabled = false)")
    findings = diagnose(pg_app)
    assert levels(findings, PG, "written by a newer Conveyor") == ["error"]
    assert levels(findings, PG, "autovacuum is disabled on table conveyor_messages") == ["error"]
    problems_have_fixes(findings)


@pytest.mark.postgres
def test_postgres_synchronous_commit_and_long_transactions(
    postgres_server: PostgresServer,
) -> None:
    role = f"doc_{uuid.uuid4().hex[:8]}"
    postgres_server.sql(f"CREATE ROLE {role} LOGIN SUPERUSER")
    postgres_server.sql(f"ALTER ROLE {role} SET synchronous_commit = off")
    app = Conveyor("doc", broker=postgres_server.url(user=role), set_as_default=False)
    try:
        app.broker.stats()
        db = app.broker.db  # type: ignore[attr-defined]  # a PostgresBroker
        findings = postgres_findings("broker", db, long_transaction=0.2)
        assert levels(findings, PG, "synchronous_commit is off") == ["warning"]
        assert levels(findings, PG, "idle_in_transaction_session_timeout is 0") == ["info"]
        assert not levels(findings, PG, "open longer than")

        with psycopg.connect(postgres_server.url(), application_name="forgotten") as idle:
            idle.execute("SELECT txid_current()")  # a transaction with an id, left open
            pid = idle.info.backend_pid
            time.sleep(0.5)  # the transaction's age is the condition under test
            findings = postgres_findings("broker", db, long_transaction=0.2)
        [long] = [f for f in findings if "open longer than" in f.message]
        assert long.level == "warning" and f"pid {pid} (forgotten" in long.message
        assert "pg_terminate_backend" in long.fix

        postgres_server.sql(f"ALTER ROLE {role} SET idle_in_transaction_session_timeout = '5min'")
        postgres_server.sql(f"ALTER ROLE {role} SET synchronous_commit = on")
        findings = postgres_findings("broker", db, long_transaction=0.2)
        assert not levels(findings, PG, "idle_in_transaction_session_timeout")
        assert not levels(findings, PG, "synchronous_commit is off")
    finally:
        app.close()


# -- RabbitMQ --------------------------------------------------------------------------------
MQ = "broker: rabbitmq"


def rabbit_app(server: RabbitServer, tmp_path: Path, prefix: str, **settings: object) -> Conveyor:
    results = f"sqlite:///{tmp_path}/results-{prefix}.db"
    return Conveyor(
        "doc",
        broker=server.url,
        result_backend=results,
        broker_transport_options={"key_prefix": prefix, **settings.pop("transport", {})},  # type: ignore[dict-item]
        set_as_default=False,
        **settings,
    )


def test_consumer_timeout_defaults_follow_the_server_version() -> None:
    assert parse_version("3.10.8") == (3, 10, 8)
    assert default_consumer_timeout((3, 8, 9)) is None
    assert default_consumer_timeout((3, 8, 15)) == 900.0
    assert default_consumer_timeout((3, 10, 8)) == 1800.0
    assert default_consumer_timeout((4, 1, 0)) == 1800.0


@pytest.mark.amqp
def test_rabbitmq_version_consumer_timeout_and_queue_arguments(
    rabbit_server: RabbitServer, tmp_path: Path
) -> None:
    prefix = f"doc{uuid.uuid4().hex[:8]}"
    app = rabbit_app(rabbit_server, tmp_path, prefix, task_time_limit=600)
    with amqp.Connection(f"127.0.0.1:{rabbit_server.port}") as conn:
        # Someone declared the app's queue by hand, as a classic queue.
        conn.channel().queue_declare(f"{prefix}.q.default", durable=True, auto_delete=False)
    try:
        findings = diagnose(app)
        assert levels(findings, MQ, "RabbitMQ 3.") == ["ok"]
        assert levels(findings, MQ, "under consumer_timeout (1800 s") == ["ok"]
        assert levels(findings, MQ, "no memory or disk alarm") == ["ok"]
        assert levels(findings, "clock") == ["info"]  # RabbitMQ has no clock to compare with
        [queue] = [f for f in findings if f.check == MQ and f"{prefix}.q.default" in f.message]
        assert queue.level == "error" and "inequivalent arg" in queue.message
        assert "delete_queue" in queue.fix
        problems_have_fixes(findings)
    finally:
        app.close()

    prefix = f"doc{uuid.uuid4().hex[:8]}"
    app = rabbit_app(rabbit_server, tmp_path, prefix)

    @app.task(name="doc.report", time_limit=7200)
    def report() -> None:
        """Runs for up to two hours."""

    @app.task(name="doc.forever")
    def forever() -> None:
        """No time limit."""

    try:
        app.send_task("doc.report")  # declares the queue the Conveyor way
        findings = diagnose(app)
        assert levels(findings, MQ, "doc.report (7200 s) may run longer") == ["error"]
        # Tasks shared by other tests of this process may be listed too (sorted, first 5).
        [unlimited] = [f for f in findings if f.check == MQ and "have no time limit" in f.message]
        assert unlimited.level == "info" and "doc.report" not in unlimited.message
        assert "doc.forever" in unlimited.message or unlimited.message.count(",") >= 4
        assert levels(findings, MQ, "1 queue(s) declared as Conveyor declares them") == ["ok"]
        problems_have_fixes(findings)
    finally:
        app.close()
    app = rabbit_app(rabbit_server, tmp_path, prefix, transport={"consumer_timeout": 0})
    try:
        assert levels(diagnose(app), MQ, "no consumer_timeout (broker_transport_options)") == ["ok"]
    finally:
        app.close()


@pytest.fixture(scope="module")
def alarmed_rabbit() -> Iterator[RabbitServer]:
    """A node that starts in a disk alarm: its free disk limit is far above any disk."""
    server = RabbitServer()
    config = server.dir / "rabbitmq.conf"
    config.write_text(
        config.read_text().replace(
            "disk_free_limit.absolute = 1MB", "disk_free_limit.absolute = 1000000000000000000"
        )
    )
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.mark.amqp
def test_rabbitmq_alarm_is_an_error_from_the_command_line(
    alarmed_rabbit: RabbitServer, tmp_path: Path
) -> None:
    results = f"sqlite:///{tmp_path}/results.db"
    env = {
        **os.environ,
        "CONVEYOR_BROKER_URL": f"{alarmed_rabbit.url}?kv_url={quote(results, safe='')}",
        "CONVEYOR_RESULT_BACKEND": results,
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "-A", "tests.integration.doctorapp", "doctor", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    alarms = [f for f in report["findings"] if "memory or disk alarm" in f["message"]]
    assert [f["level"] for f in alarms] == ["error"] and "rabbitmq-diagnostics" in alarms[0]["fix"]
    assert "guest:guest" not in done.stdout + done.stderr
