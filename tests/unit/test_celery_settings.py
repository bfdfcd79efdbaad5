"""Celery's setting names (old uppercase and new lowercase) and constructor keywords: each is
honoured, refused with a reason, or ignored, as conveyor.celery_settings says."""

from __future__ import annotations

import runpy
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import ConfigurationError, Conveyor
from conveyor.celery_names import CeleryNameWarning, forget_warnings
from conveyor.celery_settings import (
    CELERY_SETTINGS,
    CONSTRUCTOR_KEYWORDS,
    OLD_NAMES,
    TRANSPORT_OPTIONS,
    Honoured,
    Ignored,
    Refused,
)
from conveyor.config import SETTINGS, Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "celery-settings.md"


@pytest.fixture(autouse=True)
def _fresh_warnings() -> Iterator[None]:
    forget_warnings()
    yield
    forget_warnings()


def test_old_uppercase_names_in_a_module_are_honoured_and_warn_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "celeryconfig_old.py").write_text(
        "BROKER_URL = 'redis://127.0.0.1:6399/0'\n"
        "CELERYD_MAX_TASKS_PER_CHILD = 1000\n"
        "DEBUG = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Conveyor("t")
    with pytest.warns(CeleryNameWarning) as caught:
        app.config_from_object("celeryconfig_old")
    assert sorted(str(w.message).split()[0] for w in caught) == [
        "BROKER_URL",
        "CELERYD_MAX_TASKS_PER_CHILD",
    ]
    assert "rename it to worker_max_tasks_per_child" in str(caught[1].message) + str(
        caught[0].message
    )
    assert app.broker_url == "redis://127.0.0.1:6399/0"
    assert app.conf.worker_max_tasks_per_child == 1000
    app.config_from_object("celeryconfig_old")  # once: warnings are errors in this suite


def test_config_class_with_old_prefetch_multiplier() -> None:
    class Config:
        CELERYD_PREFETCH_MULTIPLIER = 4
        CELERY_ALWAYS_EAGER = True

    app = Conveyor("t", broker="memory://")
    with pytest.warns(CeleryNameWarning) as caught:
        app.config_from_object(Config)
    assert any("worker_prefetch_multiplier" in str(w.message) for w in caught)
    assert app.conf.worker_prefetch_multiplier == 4
    assert app.conf.task_always_eager is True


def test_old_names_through_conf_update_and_the_constructor() -> None:
    with pytest.warns(CeleryNameWarning, match="CELERYD_CONCURRENCY.*worker_concurrency"):
        app = Conveyor("t", broker="memory://", CELERYD_CONCURRENCY=3)
    assert app.conf.worker_concurrency == 3
    with pytest.warns(CeleryNameWarning, match="task_eager_propagates"):
        app.conf["CELERY_EAGER_PROPAGATES_EXCEPTIONS"] = True
    assert app.conf.task_eager_propagates is True
    with pytest.warns(CeleryNameWarning):
        app.conf.update(CELERYBEAT_SCHEDULE={"x": {"task": "t", "schedule": 5}})
    assert app.conf.beat_schedule == {"x": {"task": "t", "schedule": 5}}


def test_old_names_read_the_conveyor_setting() -> None:
    conf = Settings(task_always_eager=True)
    with pytest.warns(CeleryNameWarning, match="CELERY_ALWAYS_EAGER"):
        assert conf.CELERY_ALWAYS_EAGER is True  # type: ignore[attr-defined]
    assert conf["CELERY_ALWAYS_EAGER"] is True  # warned once already
    assert conf.get("CELERY_ALWAYS_EAGER") is True
    assert conf.get("worker_pool", "no such setting") == "no such setting"
    with pytest.raises(KeyError, match="Conveyor's worker is prefork"):
        conf["CELERYD_POOL"]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"worker_pool": "eventlet"}, "worker_threads"),
        ({"worker_pool": "gevent"}, "event loop"),
        ({"broker_host": "localhost"}, "put it in broker_url"),
        ({"task_queue_max_priority": 10}, "max_priority"),
        ({"task_queues": [("default",)]}, "not a conveyor.Queue"),
        ({"task_annotations": {"*": {"rate_limt": "10/s"}}}, "did you mean 'rate_limit'"),
        ({"worker_hijack_root_logger": False}, "root logger"),
        ({"broker_connection_retry_on_startup": False}, "no switch to stop connecting"),
        ({"result_accept_content": ["pickle"]}, "JSON"),
        ({"task_reject_on_worker_lost": False}, "task_max_deliveries"),
        ({"worker_soft_shutdown_timeout": 10}, "shutdown waits worker_shutdown_timeout"),
        ({"task_default_queue_type": "classic"}, r"'queue_type': 'classic'"),
    ],
)
def test_refused_settings_name_the_replacement(settings: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        Settings(**settings)
    with pytest.raises(ConfigurationError, match=named):
        Conveyor("t", broker="memory://").config_from_object(settings)


def test_refused_old_names_name_the_new_name_and_the_reason() -> None:
    with pytest.raises(ConfigurationError, match=r"CELERYD_POOL \(worker_pool\).*prefork"):
        Settings(CELERYD_POOL="gevent")
    with (
        pytest.warns(CeleryNameWarning),
        pytest.raises(ConfigurationError, match="only speaks JSON"),
    ):
        Settings(CELERY_TASK_SERIALIZER="pickle")


def test_values_meaning_what_conveyor_does_are_accepted_and_ignored() -> None:
    conf = Settings(
        broker_connection_retry_on_startup=True,
        worker_pool="prefork",
        broker_heartbeat=10,
        task_protocol=2,
        result_accept_content=["json"],
        task_default_queue_type="quorum",
        s3_bucket="media",  # a Django storage setting that shares Celery's old name
    )
    assert conf.explicit() == {}
    app = Conveyor("t", broker="memory://")
    app.config_from_object({"S3_BUCKET": "media", "BROKER_HEARTBEAT": 0, "DEBUG": True})
    assert app.conf.explicit() == {"broker_url": "memory://"}


def test_celerys_transport_options_are_refused_with_conveyors_equivalent() -> None:
    with pytest.raises(ConfigurationError, match="broker_lease_timeout"):
        Settings(broker_transport_options={"visibility_timeout": 3600})
    with pytest.warns(CeleryNameWarning), pytest.raises(ConfigurationError, match="key_prefix"):
        Conveyor("t").config_from_object({"BROKER_TRANSPORT_OPTIONS": {"global_keyprefix": "x"}})
    options = {"key_prefix": "x", "fanout_prefix": True, "socket_timeout": 5}
    assert Settings(broker_transport_options=options).broker_transport_options == options


def test_backend_keyword_and_other_celery_constructor_keywords() -> None:
    app = Conveyor("t", broker="memory://", backend="redis://127.0.0.1:6399/1")
    assert app.result_backend_url == "redis://127.0.0.1:6399/1"
    with pytest.raises(ConfigurationError, match="not both"):
        Conveyor("t", backend="memory://", result_backend="memory://")
    with pytest.raises(ConfigurationError, match="config_from_object"):
        Conveyor("t", loader="celery.loaders.app:AppLoader")
    with pytest.raises(ConfigurationError, match="base="):
        Conveyor("t", task_cls="proj.tasks:Base")
    with pytest.raises(ConfigurationError, match="config_source"):
        Conveyor("t", namespace="CELERY")
    app = Conveyor(
        "t",
        broker="memory://",
        autofinalize=True,
        strict_typing=True,
        config_source={"CELERY_TASK_DEFAULT_QUEUE": "q", "CELERY_TIMEZONE": "Europe/Paris"},
        namespace="CELERY",
        changes={"task_default_queue": "overridden"},
        set_as_default=False,
    )
    assert app.conf.task_default_queue == "overridden"
    assert app.conf.timezone == "Europe/Paris"


def test_django_style_celery_namespace() -> None:
    settings = types.SimpleNamespace(
        CELERY_BROKER_URL="redis://127.0.0.1:6399/0",
        CELERY_RESULT_BACKEND="redis://127.0.0.1:6399/1",
        CELERY_WORKER_CONCURRENCY=2,
        CELERY_TASK_ACKS_LATE=True,
        CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP=True,
        DEBUG=True,
        BROKER_URL="ignored: not in the namespace",
    )
    app = Conveyor("t")
    app.config_from_object(settings, namespace="CELERY")
    assert app.broker_url == "redis://127.0.0.1:6399/0"
    assert app.result_backend_url == "redis://127.0.0.1:6399/1"
    assert app.conf.worker_concurrency == 2
    with pytest.raises(ConfigurationError, match=r"CELERY_WORKER_POOL.*prefork"):
        app.config_from_object({"CELERY_WORKER_POOL": "gevent"}, namespace="CELERY")
    # Old names, which Celery ignores under a namespace, are errors naming the new one.
    with pytest.raises(ConfigurationError, match="use CELERY_TASK_ALWAYS_EAGER"):
        app.config_from_object({"CELERY_ALWAYS_EAGER": True}, namespace="CELERY")
    with pytest.raises(ConfigurationError, match="use CELERY_WORKER_CONCURRENCY"):
        app.config_from_object({"CELERYD_CONCURRENCY": 4}, namespace="CELERY")


def test_unknown_names_name_the_closest_and_its_fate() -> None:
    with pytest.raises(ConfigurationError, match=r"did you mean 'worker_pool'\? \(Conveyor: "):
        Settings(worker_pol="prefork")
    with pytest.raises(ConfigurationError, match="did you mean 'CELERYD_CONCURRENCY' "):
        Conveyor("t").config_from_object({"CELERYD_CONCURENCY": 2})
    with pytest.raises(ConfigurationError, match="namespace='CELERY'"):
        Conveyor("t").config_from_object({"CELERY_TASK_ALWAYS_EAGER": True})
    with pytest.raises(ConfigurationError, match="did you mean 'CELERY_WORKER_CONCURRENCY'"):
        Conveyor("t").config_from_object({"CELERY_WORKER_CONCURENCY": 2}, namespace="CELERY")
    with pytest.raises(AttributeError, match="Celery's worker_pool: Conveyor's worker is"):
        _ = Settings().worker_pool  # type: ignore[attr-defined]


def test_two_names_for_one_setting_must_agree() -> None:
    with (
        pytest.warns(CeleryNameWarning),
        pytest.raises(ConfigurationError, match="BROKER_URL and broker_url both set"),
    ):
        Conveyor("t").config_from_object({"BROKER_URL": "memory://", "broker_url": "redis://h"})


def test_celery_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Conveyor("t", broker="memory://")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6399/0")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6399/1")
    assert app.broker_url == "redis://127.0.0.1:6399/0"
    assert app.result_backend_url == "redis://127.0.0.1:6399/1"
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "memory://")  # Conveyor's own wins
    assert app.broker_url == "memory://"


def test_the_table_covers_celery_and_points_at_real_settings() -> None:
    assert len(CELERY_SETTINGS) == 198  # Celery 5.6's settings
    for name, fate in CELERY_SETTINGS.items():
        if isinstance(fate, Honoured):
            assert fate.setting in SETTINGS, name
        else:
            assert name not in SETTINGS, f"{name} is a Conveyor setting: honour it"
            assert fate.reason
        assert isinstance(fate, Honoured | Refused | Ignored)
    assert set(OLD_NAMES.values()) <= set(CELERY_SETTINGS)
    assert OLD_NAMES["CELERY_TASK_RESULT_EXPIRES"] == "result_expires"
    assert OLD_NAMES["CELERY_MAX_CACHED_RESULTS"] == "result_cache_max"
    assert OLD_NAMES["CELERYBEAT_SCHEDULE"] == "beat_schedule"


def test_the_doc_lists_every_name_with_its_fate() -> None:
    doc = DOC.read_text()
    rows = {line.split("|")[1].strip(): line for line in doc.splitlines() if line.startswith("| `")}
    for name, fate in CELERY_SETTINGS.items():
        row = rows[f"`{name}`"]
        kind = {Honoured: "honoured", Refused: "refused", Ignored: "ignored"}[type(fate)]
        assert f"| {kind} |" in row, name
    for old, new in OLD_NAMES.items():
        assert f"`{old}`" in rows[f"`{new}`"], old
    for keyword in CONSTRUCTOR_KEYWORDS:
        assert f"`{keyword}=`" in rows
    for key in TRANSPORT_OPTIONS:
        assert f"`{key}`" in rows


def test_the_doc_is_what_the_script_writes() -> None:
    script = runpy.run_path(str(DOC.parents[1] / "scripts" / "celery-settings-doc"))
    assert DOC.read_text() == script["render"](), "run scripts/celery-settings-doc"
