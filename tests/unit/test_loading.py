"""Loading: integrations preparing a process through the ``conveyor.worker_setup`` group."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import pytest

from conveyor import ConfigurationError, Conveyor
from conveyor.loading import WORKER_SETUP_GROUP, prepare_app
from conveyor.worker.execution import TaskRunner

calls: list[tuple[str, bool]] = []


class FirstRunner(TaskRunner):
    pass


class SecondRunner(TaskRunner):
    pass


def setup_first(app: Conveyor) -> type[TaskRunner] | None:
    calls.append(("first", app.conf.task_default_queue == "setup-ran"))
    app.conf.task_default_queue = "setup-ran"
    return FirstRunner


def setup_nothing(app: Conveyor) -> type[TaskRunner] | None:
    calls.append(("nothing", app.conf.task_default_queue == "setup-ran"))
    return None


def setup_second(app: Conveyor) -> type[TaskRunner] | None:
    return SecondRunner


def register(monkeypatch: pytest.MonkeyPatch, **targets: str) -> None:
    points = [EntryPoint(name, value, WORKER_SETUP_GROUP) for name, value in targets.items()]
    monkeypatch.setattr("conveyor.loading.entry_points", lambda group: points)


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    calls.clear()


def test_setups_run_in_name_order_before_the_app_is_finalized(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register(
        monkeypatch,
        b=f"{__name__}:setup_nothing",
        a=f"{__name__}:setup_first",
    )
    app = Conveyor("t", broker="memory://")
    finalizations: list[Any] = []
    app.on_after_finalize.connect(lambda sender, **_: finalizations.append(calls[:]))
    assert prepare_app(app) is FirstRunner
    assert calls == [("first", False), ("nothing", True)]
    assert finalizations == [calls]


def test_no_setup_means_the_default_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, only=f"{__name__}:setup_nothing")
    assert prepare_app(Conveyor("t", broker="memory://")) is None


def test_two_setups_choosing_runners_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, a=f"{__name__}:setup_first", b=f"{__name__}:setup_second")
    with pytest.raises(ConfigurationError, match=r"'a' and 'b' both choose a task runner"):
        prepare_app(Conveyor("t", broker="memory://"))


def test_a_setup_missing_a_dependency_is_skipped_but_a_broken_one_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "needs_framework.py").write_text(
        "import conveyor_test_framework_not_installed\n\ndef setup(app):\n    return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    register(monkeypatch, framework="needs_framework:setup")
    assert prepare_app(Conveyor("t", broker="memory://")) is None

    register(monkeypatch, typo="conveyor.no_such_module:setup")
    with pytest.raises(ModuleNotFoundError, match=r"conveyor\.no_such_module"):
        prepare_app(Conveyor("t", broker="memory://"))


def test_django_registers_a_setup_that_only_acts_in_django_projects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # registered by the package metadata (entry point), not named by the core
    registered = {e.name: e.value for e in entry_points(group=WORKER_SETUP_GROUP)}
    assert registered["django"] == "conveyor.contrib.django_setup:worker_setup"
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    assert prepare_app(Conveyor("t", broker="memory://")) is None


def test_a_worker_outside_django_never_imports_django() -> None:
    # Every worker consults the entry points: without DJANGO_SETTINGS_MODULE, loading the
    # Django one must not import Django (it cost every worker ~40 MiB).
    code = (
        "import sys; from conveyor import Conveyor; from conveyor.loading import prepare_app; "
        "prepare_app(Conveyor('t', broker='memory://')); "
        "print(sorted(m for m in sys.modules if m == 'django' or m.startswith('django.')))"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
