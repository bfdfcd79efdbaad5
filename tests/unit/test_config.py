from __future__ import annotations

import types
from datetime import timedelta

import pytest

from conveyor import ConfigurationError, Conveyor
from conveyor.config import SETTINGS, Settings


def test_defaults_match_the_documented_values() -> None:
    conf = Settings()
    assert conf.result_expires == 86400.0
    assert conf.task_default_queue == "default"
    assert conf.task_acks_late is True
    assert conf.message_max_bytes == 256 * 1024
    assert conf.broker_lease_timeout == 30.0
    assert conf.broker_sweep_interval == 5.0
    assert conf.task_max_deliveries == 4
    assert conf.timezone == "UTC"
    assert conf.beat_schedule == {}


def test_attribute_and_update_assignment() -> None:
    app = Conveyor("t", broker="memory://")
    app.conf.task_default_queue = "emails"
    app.conf.update(result_expires=timedelta(hours=1), worker_concurrency=3)
    assert app.conf.task_default_queue == "emails"
    assert app.conf.result_expires == 3600.0
    assert app.conf["worker_concurrency"] == 3


def test_unknown_setting_names_the_closest_valid_one() -> None:
    conf = Settings()
    with pytest.raises(ConfigurationError, match="did you mean 'broker_url'"):
        conf.broker_ulr = "redis://"
    with pytest.raises(ConfigurationError, match="result_expires"):
        conf.update(result_expire=10)
    with pytest.raises(ConfigurationError, match="unknown setting"):
        Conveyor("t", task_defualt_queue="x")


def test_update_is_all_or_nothing() -> None:
    conf = Settings()
    with pytest.raises(ConfigurationError):
        conf.update(task_default_queue="q", task_default_priority=42)
    assert conf.task_default_queue == "default"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("task_default_priority", 10),
        ("broker_lease_timeout", -1),
        ("task_max_deliveries", 0),
        ("timezone", "Mars/Olympus"),
        ("task_acks_late", "maybe"),
    ],
)
def test_invalid_values_are_rejected(name: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Settings(**{name: value})


def test_integer_bounds_are_stated_as_they_are() -> None:
    with pytest.raises(ConfigurationError, match="task_max_deliveries must be at least 1, got 0"):
        Settings(task_max_deliveries=0)
    with pytest.raises(ConfigurationError, match="task_default_priority must be between 0 and 9"):
        Settings(task_default_priority=10)


def test_pickle_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="only speaks JSON"):
        Settings(task_serializer="pickle")
    with pytest.raises(ConfigurationError, match="only speaks JSON"):
        Settings(accept_content=["json", "pickle"])
    assert Settings(accept_content=["json"]).accept_content == ["json"]


def test_config_from_mapping_object_and_module() -> None:
    app = Conveyor("t", broker="memory://")
    app.config_from_object({"task_default_queue": "a"})
    assert app.conf.task_default_queue == "a"

    class Config:
        task_default_queue = "b"
        REDIS_HOST = "ignored: not lowercase"

    app.config_from_object(Config)
    assert app.conf.task_default_queue == "b"
    module = types.ModuleType("cfg")
    module.task_default_queue = "c"  # type: ignore[attr-defined]
    app.config_from_object(module)
    assert app.conf.task_default_queue == "c"


def test_config_from_dotted_path_with_namespace(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "proj_settings.py").write_text(
        "CONVEYOR_BROKER_URL = 'memory://'\n"
        "CONVEYOR_TASK_DEFAULT_QUEUE = 'reports'\n"
        "CELERY_TIMEZONE = 'Asia/Shanghai'\n"
        "DEBUG = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Conveyor("t")
    app.config_from_object("proj_settings", namespace="CONVEYOR")
    assert app.conf.broker_url == "memory://"
    assert app.conf.task_default_queue == "reports"
    assert app.conf.timezone == "UTC"  # other namespaces are ignored
    app.config_from_object("proj_settings", namespace="CELERY")
    assert app.conf.timezone == "Asia/Shanghai"


def test_unknown_namespaced_setting_is_an_error() -> None:
    app = Conveyor("t", broker="memory://")
    with pytest.raises(ConfigurationError, match="CONVEYOR_BROKER_URL"):
        app.config_from_object({"CONVEYOR_BROKER_UR": "x"}, namespace="CONVEYOR")


def test_missing_config_module_is_a_clear_error() -> None:
    app = Conveyor("t", broker="memory://")
    with pytest.raises(ConfigurationError, match="cannot import configuration"):
        app.config_from_object("no.such.module")


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Conveyor("t", broker="memory://")
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("CONVEYOR_RESULT_BACKEND", "memory://")
    assert app.broker_url == "redis://127.0.0.1:1/0"
    assert app.result_backend_url == "memory://"


def test_result_backend_follows_broker() -> None:
    app = Conveyor("t", broker="memory://")
    assert app.result_backend_url == "memory://"
    app2 = Conveyor("t", broker="memory://", result_backend="sqlite:///r.db")
    assert app2.result_backend_url == "sqlite:///r.db"


def test_every_setting_has_documentation() -> None:
    assert all(setting.doc for setting in SETTINGS.values())


def test_repr_redacts_passwords() -> None:
    app = Conveyor("t", broker="redis://user:s3cret@localhost:6379/0")
    assert "s3cret" not in repr(app)
    assert "***" in repr(app)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:s3cret@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:s3cret@host/0", "redis://:***@host/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://:s3cret@host:notaport/0", "redis://:***@host:notaport/0"),
        ("redis://:p@ss/w0rd@host/0", "redis://:***@host/0"),
        (
            "redis+sentinel://u:s3cret@h1:26379,h2:26380/mymaster/0",
            "redis+sentinel://u:***@h1:26379,h2:26380/mymaster/0",
        ),
        (
            "sentinel://:s3cret@h1:26379;sentinel://:s3cret@h2:26379",
            "sentinel://:***@h1:26379;sentinel://:***@h2:26379",
        ),
        ("sqlite:///var/conveyor.db", "sqlite:///var/conveyor.db"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    from conveyor.brokers.base import redact_url

    assert redact_url(url) == shown


def test_mutable_defaults_are_per_app_and_not_explicit() -> None:
    first, second = Settings(), Settings()
    first.task_routes["a.*"] = "q"
    assert second.task_routes == {}
    assert first.task_routes == {"a.*": "q"}
    assert "task_routes" not in first.explicit()


@pytest.mark.parametrize("created", [1700000000.9999, 1700000001.0004, 1700000001.5, 0.25])
def test_log_formatter_redacts_and_times_lines_like_logging(created: float) -> None:
    import logging

    from conveyor.loading import LOG_FORMAT, RedactingFormatter

    ours, stdlib = RedactingFormatter(LOG_FORMAT), logging.Formatter(LOG_FORMAT)
    for when in (created, created + 0.001, created - 1.0):  # cached second, then another
        record = logging.LogRecord("w", logging.INFO, "f", 1, "to redis://u:s3cret@h/0", None, None)
        record.created, record.msecs = when, (when - int(when)) * 1000
        line = ours.format(record)
        assert "s3cret" not in line
        assert line == stdlib.format(record).replace("s3cret", "***")


def test_result_store_schemes_include_registered_ones_and_unknown_ones_fail() -> None:
    from conveyor.results import result_store_schemes

    # django:// is registered by the package metadata (entry point), not named by the core
    assert result_store_schemes()["django"] == "conveyor.contrib.django.results:DjangoResultStore"
    with pytest.raises(ConfigurationError, match=r"unsupported result backend URL 'nope://'"):
        _ = Conveyor("t", broker="memory://", result_backend="nope://").results
    # Celery's result backends say what they were and what to use instead.
    with pytest.raises(ConfigurationError, match=r"rpc:// sends results back as AMQP messages"):
        _ = Conveyor("t", broker="memory://", backend="rpc://").results
    with pytest.raises(ConfigurationError, match=r"SQLAlchemy backend.*postgresql://"):
        _ = Conveyor("t", broker="memory://", backend="db+sqlite:///results.db").results
