"""The ``conveyor`` command line, run as ``python -m conveyor`` against real brokers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import states
from conveyor.cli import find_app
from conveyor.exceptions import ConfigurationError
from tests.integration import test_worker_processes as processes
from tests.integration.test_worker_processes import ROOT, Harness, wait_for
from tests.integration.workerapp import runs
from tests.servers import free_port

APP = "tests.integration.workerapp"

# The brokers, harness and workers of the process tests.
backend = processes.backend
redis_server = processes.redis_server
harness_factory = processes.harness_factory
harness = processes.harness


def conveyor(
    harness: Harness | None,
    *args: str,
    input: str | None = None,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m conveyor ARGS`` (the app from $CONVEYOR_APP) and capture its output."""
    full_env = dict(harness.env if harness is not None else os.environ)
    full_env.setdefault("CONVEYOR_APP", APP)
    full_env["COLUMNS"] = "200"
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        cwd=cwd,
        env=full_env,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: "), result.stderr
    return lines[-1]


# -- finding the app, and errors ---------------------------------------------------------------
def test_help_lists_the_commands() -> None:
    result = conveyor(None, "--help")
    assert result.returncode == 0
    for command in ("worker", "beat", "status", "purge", "dlq", "revoke", "result"):
        assert command in result.stdout


def test_missing_app_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_APP"}
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "status"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "no app given" in one_line_error(result, 2)


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A current directory for throwaway app modules, forgotten after the test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_unknown_module_and_module_without_app_are_clear_errors(scratch: Path) -> None:
    cases = {
        "no_such_module_xyz": "cannot import 'no_such_module_xyz': no module named",
        "tests.integration": "no Conveyor app found for -A tests.integration",
        f"{APP}:nothing": "has no attribute 'nothing'",
        f"{APP}:register": "is a function, not a Conveyor app",
    }
    for spec, message in cases.items():
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            find_app(spec)


def test_error_while_importing_the_app_is_one_line_naming_the_place(tmp_path: Path) -> None:
    (tmp_path / "brokenapp.py").write_text("x = 1\nraise RuntimeError('boom')\n")
    line = one_line_error(conveyor(None, "-A", "brokenapp", "status", cwd=tmp_path), 1)
    assert "RuntimeError: boom" in line
    assert "brokenapp.py:2" in line


def test_app_lookup_order_from_the_current_directory(scratch: Path) -> None:
    package = scratch / "lookup_proj"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "conveyor.py").write_text("from conveyor import Conveyor\napp = Conveyor('sub')\n")
    (scratch / "lookup_single.py").write_text("import conveyor\nmine = conveyor.Conveyor('one')\n")
    (scratch / "lookup_attr.py").write_text(
        "from conveyor import Conveyor\na = Conveyor('first')\napp = Conveyor('named')\n"
    )
    found = {spec: find_app(spec).main for spec in ("lookup_proj", "lookup_single")}
    found.update({spec: find_app(spec).main for spec in ("lookup_attr", "lookup_attr:a")})
    assert found == {
        "lookup_proj": "sub",
        "lookup_single": "one",
        "lookup_attr": "named",
        "lookup_attr:a": "first",
    }
    (scratch / "lookup_two.py").write_text("from conveyor import Conveyor as C\na = C()\nb = C()\n")
    with pytest.raises(ConfigurationError, match=r"several Conveyor apps \(a, b\)"):
        find_app("lookup_two")


def test_celery_layout_proj_celery_py_is_found(scratch: Path) -> None:
    # Celery's standard layout (the seeds' quick_publisher): the app in proj/celery.py, and
    # proj/__init__.py either empty or re-exporting it under another name.
    for name, init in (("layout_empty", ""), ("layout_export", "from .celery import app as x\n")):
        package = scratch / name
        package.mkdir()
        (package / "__init__.py").write_text(init)
        (package / "celery.py").write_text(
            f"from conveyor import Conveyor\napp = Conveyor({name!r})\n"
        )
        assert find_app(name).main == name
    (scratch / "attr_celery.py").write_text(
        "from conveyor import Conveyor\ncelery = Conveyor('c')\nother = Conveyor('o')\n"
    )
    assert find_app("attr_celery").main == "c"  # Celery's second attribute name
    assert find_app("layout_empty.celery.app").main == "layout_empty"  # dotted attribute


def test_app_not_found_says_what_was_tried_and_how_to_fix_it(scratch: Path) -> None:
    package = scratch / "empty_proj"
    package.mkdir()
    (package / "__init__.py").write_text("")
    with pytest.raises(ConfigurationError) as info:
        find_app("empty_proj")
    message = str(info.value)
    for tried in ("empty_proj.app", "empty_proj.celery", "empty_proj.conveyor (no such module)"):
        assert tried in message
    assert "define `app = Conveyor(...)` in empty_proj/celery.py" in message
    assert "-A MODULE:NAME" in message


def test_cli_finds_the_app_from_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "cwdapp.py").write_text("from conveyor import Conveyor\napp = Conveyor('cwd')\n")
    env = {"CONVEYOR_BROKER_URL": f"sqlite:///{tmp_path}/b.db"}
    result = conveyor(None, "-A", "cwdapp", "result", "some-id", cwd=tmp_path, env=env)
    assert (result.returncode, result.stdout.strip()) == (0, "PENDING"), result.stderr


def test_passwords_never_reach_the_terminal(tmp_path: Path) -> None:
    env = {"CONVEYOR_BROKER_URL": "redis://user:s3cret-pw@127.0.0.1:1/0"}
    for args in (("status",), ("worker", "-c", "1")):
        result = conveyor(None, *args, env=env)
        assert result.returncode == 1
        assert "s3cret-pw" not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr


def test_prefork_refuses_the_in_process_memory_broker() -> None:
    result = conveyor(None, "worker", env={"CONVEYOR_BROKER_URL": "memory://"})
    assert "cannot feed child processes" in one_line_error(result, 1)


def test_bad_option_value_is_a_usage_error() -> None:
    result = conveyor(None, "worker", "--pool", "nope")
    assert result.returncode == 2
    assert "Invalid value" in result.stderr


# -- inspection and maintenance against a real broker ----------------------------------------
def test_status_shows_queues_and_live_workers(harness: Harness) -> None:
    empty = json.loads(conveyor(harness, "status", "--json").stdout)["queues"]
    # The default queue shows while empty, on SQLite as on Redis.
    assert empty["default"] == {"ready": 0, "delayed": 0, "leased": 0, "dead": 0, "consumers": 0}
    harness.send("add", 1, 1, queue="alpha")
    harness.send("add", 1, 1, queue="alpha", countdown=60)
    worker = harness.worker("-c", "2")
    worker.wait_children(2)

    def two_workers() -> dict[str, object] | None:
        data = json.loads(conveyor(harness, "status", "--json").stdout)
        return data if len(data["workers"]) == 2 else None

    data = wait_for(two_workers, 15, "two workers announced")
    alpha = {"ready": 1, "delayed": 1, "leased": 0, "dead": 0, "consumers": 0}
    assert data["queues"]["alpha"] == alpha
    assert data["queues"]["default"]["consumers"] == 2
    assert data["unconsumed"] == ["alpha"]  # ready messages, and no live worker consumes it
    pids = sorted(info["pid"] for info in data["workers"].values())
    assert pids == worker.children()
    table = conveyor(harness, "status")
    assert table.returncode == 0
    assert "alpha" in table.stdout
    assert "Workers alive: 2" in table.stdout
    assert "alpha: 1 ready message(s) and no live worker consumes this queue" in table.stdout


def test_worker_warns_when_its_queues_leave_routed_or_default_queues_alone(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(task_routes={"workerapp.record": {"queue": "records"}})
    worker = harness.worker("-c", "1", "-Q", "hipri,celery")
    wait_for(lambda: "no live worker consumes" in worker.output(), 20, "the warning")
    line = next(x for x in worker.output().splitlines() if "no live worker consumes" in x)
    assert "WARNING" in line
    assert "'default' (the default queue)" in line
    assert "'records' (routed: workerapp.record)" in line
    assert "'celery' is Celery's default queue; Conveyor's is 'default'" in line
    # A second worker consuming them is told nothing: the first one is alive.
    worker.wait_children(1)
    wait_for(lambda: json.loads(conveyor(harness, "status", "--json").stdout)["workers"], 15, "")
    quiet = harness.worker("-c", "1", "-Q", "default,records")
    quiet.wait_children(1)
    wait_for(lambda: "queues:" in quiet.output(), 15, "the banner")
    assert "no live worker consumes" not in quiet.output()


def test_purge_asks_first_and_deletes_waiting_messages(harness: Harness) -> None:
    for _ in range(3):
        harness.send("add", 1, 1)
    harness.send("add", 1, 1, queue="other")
    declined = conveyor(harness, "purge", "-Q", "default", input="n\n")
    assert declined.returncode == 1
    assert harness.client.broker.stats(["default"])["default"].ready == 3
    done = conveyor(harness, "purge", "-Q", "default", "--yes")
    assert done.returncode == 0, done.stderr
    assert "Purged 3 message(s)" in done.stdout
    stats = harness.client.broker.stats(["default", "other"])
    assert (stats["default"].ready, stats["other"].ready) == (0, 1)


def test_dlq_list_replay_and_purge(harness: Harness) -> None:
    broker = harness.client.broker
    ids = [harness.send("add", i, i).id for i in range(3)]
    for delivery in broker.lease(["default"], 3, 1.0):
        broker.dead_letter(delivery, "rejected", f"bad {delivery.id[:4]}")
    listed = json.loads(conveyor(harness, "dlq", "list", "--json").stdout)
    assert sorted(d["id"] for d in listed) == sorted(ids)
    assert {d["reason"] for d in listed} == {"rejected"}
    assert all(d["body"].startswith("workerapp.add(") for d in listed)
    table = conveyor(harness, "dlq", "list", "-Q", "default")
    assert table.returncode == 0
    assert all(task_id in table.stdout for task_id in ids)
    assert "workerapp.add(0, 0)" in table.stdout
    narrow = conveyor(harness, "dlq", "list", env={"COLUMNS": "80"}).stdout
    assert max(len(line) for line in narrow.splitlines()) <= 80
    for task_id in ids:  # whole ids, reasons and details: nothing cut to one word
        assert re.search(rf"^{task_id}  default  rejected$", narrow, re.M), narrow
        assert f"detail: bad {task_id[:4]}" in narrow
    assert "body: workerapp.add(0, 0)" in narrow

    replayed = conveyor(harness, "dlq", "replay", ids[0])
    assert replayed.returncode == 0, replayed.stderr
    assert "Replayed 1 dead letter(s)" in replayed.stdout
    assert broker.stats(["default"])["default"].ready == 1
    missing = conveyor(harness, "dlq", "replay", ids[0])
    assert "not in the dead-letter queue" in one_line_error(missing, 1)
    assert conveyor(harness, "dlq", "replay").returncode == 2

    assert conveyor(harness, "dlq", "purge", "--all", input="n\n").returncode == 1
    purged = conveyor(harness, "dlq", "purge", "--all", "--yes")
    assert "Deleted 2 dead letter(s)" in purged.stdout
    assert broker.dead_letters() == []


def test_revoke_and_result(harness: Harness) -> None:
    path = harness.tmp_path / "revoked.runs"
    doomed = harness.send("record", str(path))
    done = conveyor(harness, "revoke", doomed.id)
    assert done.returncode == 0, done.stderr
    assert harness.client.broker.revoked([doomed.id]) == {doomed.id}
    running = str(uuid.uuid4())
    conveyor(harness, "revoke", "--terminate", running)
    assert harness.client.broker.revoked([f"terminate:{running}"]) == {f"terminate:{running}"}

    harness.worker("-c", "1")
    ok = harness.send("add", 2, 2)
    assert ok.get(timeout=15) == 4
    harness.wait_state(doomed.id, states.REVOKED, 10)
    assert runs(path) == []
    shown = conveyor(harness, "result", ok.id)
    assert shown.stdout.split() == ["SUCCESS", "4"]
    assert conveyor(harness, "result", doomed.id).stdout.split() == ["REVOKED"]
    assert conveyor(harness, "result", "unknown-id").stdout.split() == ["PENDING"]
    record = json.loads(conveyor(harness, "result", "--json", ok.id).stdout)
    assert (record["id"], record["state"], record["result"]) == (ok.id, "SUCCESS", 4)


# -- beat ------------------------------------------------------------------------------------
def _beat_settings(path: Path) -> dict[str, object]:
    tick = {"task": "workerapp.record", "schedule": 0.5, "args": [str(path)]}
    return {"beat_schedule": {"tick": tick}}


def test_beat_command_sends_periodic_tasks_and_stops_on_sigterm(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    path = tmp_path / "beat.runs"
    harness = harness_factory(**_beat_settings(path))
    command = [sys.executable, "-m", "conveyor", "-A", APP, "beat", "--max-interval", "0.2"]
    with (tmp_path / "beat.log").open("wb") as log:
        beat = subprocess.Popen(
            command, cwd=ROOT, env=harness.env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            harness.worker("-c", "1")
            wait_for(lambda: len(runs(path)) >= 2, 20, "two periodic runs")
            beat.send_signal(signal.SIGTERM)
            assert beat.wait(15) == 0
        finally:
            if beat.poll() is None:
                beat.kill()
                beat.wait(10)
    print((tmp_path / "beat.log").read_text())


def test_worker_with_embedded_beat(harness_factory: Callable[..., Harness], tmp_path: Path) -> None:
    path = tmp_path / "beat.runs"
    harness = harness_factory(**_beat_settings(path))
    worker = harness.worker("-c", "1", "-B")
    wait_for(lambda: len(runs(path)) >= 2, 20, "two periodic runs")
    assert len(worker.children()) == 2  # one worker child and the beat process
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert time.monotonic() - started < 10


# -- Celery's options and commands -----------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("worker", "--concurency", "2"), "Did you mean '--concurrency'?"),
        (("worker", "-P", "gevent"), "eventlet/gevent/threads pools are not supported"),
        (("worker", "--detach"), "does not daemonize"),
        (("beat", "-S", "django"), "reads the database schedules too"),
        (("--loader", "x", "status"), "Conveyor has no loaders"),
        (("flower",), "`celery flower`: Conveyor's own dashboard: `conveyor dashboard`"),
        (("statu",), "did you mean 'status'?"),
    ],
)
def test_unknown_options_and_commands_name_the_closest_or_conveyors_equivalent(
    args: tuple[str, ...], message: str
) -> None:
    result = conveyor(None, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_beat_pidfile_logfile_and_celerys_schedule_file(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    harness = harness_factory(**_beat_settings(tmp_path / "beat.runs"))
    pid, log, schedule = tmp_path / "beat.pid", tmp_path / "beat.log", tmp_path / "celerybeat-s"
    options = ["--pidfile", str(pid), "-f", str(log), "-s", str(schedule), "--max-interval", "0.2"]
    command = [sys.executable, "-m", "conveyor", "-A", APP, "beat", *options]
    beat = subprocess.Popen(command, cwd=ROOT, env=harness.env, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: pid.exists() and pid.read_text().strip() == str(beat.pid), 20, "pid")
        wait_for(lambda: log.exists() and "Celery's beat state file" in log.read_text(), 20, "")
        assert f"so {schedule} is not used" in log.read_text()
        second = conveyor(harness, "beat", "--pidfile", str(pid))
        assert f"already running: process {beat.pid} holds pid file" in one_line_error(second, 1)
        beat.send_signal(signal.SIGTERM)
        assert beat.wait(15) == 0
    finally:
        if beat.poll() is None:
            beat.kill()
            beat.wait(10)
    assert not pid.exists()  # removed on exit
    assert not schedule.exists()  # never written: beat state lives in the broker
    pid.write_text("999999999\n")  # stale: no such process; replaced, then removed
    stale = conveyor(
        harness, "beat", "--pidfile", str(pid), env={"CONVEYOR_BROKER_URL": "redis://127.0.0.1:1/0"}
    )
    assert stale.returncode == 1
    assert "removing stale pid file" in stale.stderr
    assert not pid.exists()


# -- Django projects without conveyor.contrib.django in INSTALLED_APPS ------------------------
def test_beat_of_a_django_project_without_the_installed_app_says_so_once(tmp_path: Path) -> None:
    (tmp_path / "plain_settings.py").write_text(
        "SECRET_KEY = 'x'\nINSTALLED_APPS = ['django.contrib.contenttypes']\nUSE_TZ = True\n"
        f"DATABASES = {{'default': {{'ENGINE': 'django.db.backends.sqlite3', "
        f"'NAME': '{tmp_path}/db.sqlite3'}}}}\n"
        "CONVEYOR_BEAT_SCHEDULE = {'tick': {'task': 'plainproj.tick', 'schedule': 0.3}}\n"
    )
    (tmp_path / "plainproj.py").write_text(
        "import os\nfrom conveyor import Conveyor\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'plain_settings')\n"
        "app = Conveyor('plainproj')\n"
        "app.config_from_object('django.conf:settings', namespace='CONVEYOR')\n"
        "@app.task\ndef tick():\n    return 1\n"
    )
    env = dict(os.environ, CONVEYOR_BROKER_URL=f"sqlite:///{tmp_path}/broker.db")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    log = tmp_path / "beat.log"
    command = [sys.executable, "-m", "conveyor", "-A", "plainproj", "beat", "-f", str(log)]
    beat = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    try:
        # Past the database schedule's first polls (every 2 s), which used to fail each time.
        wait_for(lambda: log.exists() and log.read_text().count("sent tick") >= 8, 20, "runs")
        beat.send_signal(signal.SIGTERM)
        assert beat.wait(15) == 0
    finally:
        if beat.poll() is None:
            beat.kill()
            beat.wait(10)
    text = log.read_text()
    assert "ERROR" not in text and "Traceback" not in text, text
    assert text.count("conveyor.contrib.django is not in INSTALLED_APPS") == 1


def test_warm_shutdown_counts_only_tasks_still_running(harness: Harness) -> None:
    worker = harness.worker("-c", "1")
    doomed = harness.send("sleep", str(harness.file()), 60)
    harness.wait_state(doomed.id, states.STARTED, 15)
    assert conveyor(harness, "revoke", "--terminate", doomed.id).returncode == 0
    harness.wait_state(doomed.id, states.REVOKED, 15)
    worker.signal(signal.SIGTERM)  # right after the task was terminated
    assert worker.wait(15) == 0
    assert "warm shutdown: no task running" in worker.output()
    assert "finishing 1 running task(s)" not in worker.output()
    again = harness.worker("-c", "1")
    harness.wait_state(harness.send("sleep", str(harness.file()), 1).id, states.STARTED, 15)
    again.signal(signal.SIGTERM)
    assert again.wait(15) == 0
    assert "warm shutdown: finishing 1 running task(s)" in again.output()


# -- the demo --------------------------------------------------------------------------------
@pytest.mark.slow  # migrating and loading the demo data take half a minute on a busy machine
def test_demo_stops_soon_after_sigint(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        DEMO_PYTHON=sys.executable,
        PORT=str(free_port()),
        QUICK_PUBLISHER_VAR=str(tmp_path),
        CONVEYOR_BROKER_URL=f"sqlite:///{tmp_path}/broker.db",
    )
    env.pop("CONVEYOR_APP", None)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [str(ROOT / "scripts" / "demo")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # SIGINT as in a terminal (a shell starting background jobs ignores it)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        wait_for(lambda: "starting with" in log.read_text(), 90, "the demo's beat started")
        started = time.monotonic()
        demo.send_signal(signal.SIGINT)  # `kill -INT` of the script alone
        assert demo.wait(30) == 130
        took = time.monotonic() - started
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
    text = log.read_text()
    assert "demo: stopped" in text and "warm shutdown" in text, text
    assert took < 6, f"{took:.1f}s to stop (it used to wait 10 s before signalling)"


def test_celerys_global_broker_and_workdir_options(tmp_path: Path) -> None:
    (tmp_path / "wdapp.py").write_text("from conveyor import Conveyor\napp = Conveyor('wd')\n")
    db = tmp_path / "given.db"
    env = {"CONVEYOR_BROKER_URL": ""}
    args = ("--workdir", str(tmp_path), "-b", f"sqlite:///{db}", "-A", "wdapp", "result", "x")
    result = conveyor(None, *args, env=env)
    assert (result.returncode, result.stdout.strip()) == (0, "PENDING"), result.stderr
    assert db.exists()  # -b chose the broker (and so the result store)
