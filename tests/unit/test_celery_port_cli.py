"""Celery spellings around queues and task options: ``conveyor.Queue`` / ``Exchange`` in
``task_queues`` and ``task_annotations`` (issue 12, without kombu)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from conveyor import ConfigurationError, Conveyor, Exchange, Queue, Task


def queue_and_priority(app: Conveyor, name: str, **options: object) -> tuple[str, int]:
    envelope, _, _ = app.prepare(name, (), {}, options, app.tasks.get(name))
    return envelope.queue, envelope.priority


@pytest.fixture
def app() -> Conveyor:
    app = Conveyor("t", broker="memory://")

    @app.task(name="feed.tasks.import_feed")
    def import_feed() -> None: ...

    @app.task(name="tasks.add")
    def add() -> None: ...

    return app


# -- queue declarations ----------------------------------------------------------------------
def test_routing_keys_reach_the_declared_queue_bound_to_them(app: Conveyor) -> None:
    # Celery's routing guide, without kombu: a topic exchange and two queues.
    tasks = Exchange("tasks", type="topic")
    app.conf.task_queues = (
        Queue("default", tasks, routing_key="task.#"),
        Queue("feed_tasks", tasks, routing_key="feed.#", max_priority=5),
        Queue("direct_q"),  # a direct binding with its own name as the key
    )
    app.conf.task_routes = {"feed.tasks.*": {"exchange": "tasks", "routing_key": "feed.import"}}
    assert queue_and_priority(app, "feed.tasks.import_feed", priority=9) == ("feed_tasks", 5)
    assert queue_and_priority(app, "tasks.add", routing_key="task.add")[0] == "default"
    assert queue_and_priority(app, "tasks.add", routing_key="direct_q", exchange="")[0] == (
        "direct_q"
    )
    assert queue_and_priority(app, "tasks.add", priority=9) == ("default", 9)  # no cap there
    with pytest.raises(ConfigurationError, match=r"'nowhere\.x' reaches no queue declared"):
        queue_and_priority(app, "tasks.add", routing_key="nowhere.x")
    with pytest.raises(ConfigurationError, match="reaches no queue"):
        queue_and_priority(app, "tasks.add", routing_key="feed.import", exchange="other")


def test_without_declarations_a_routing_key_names_the_queue(app: Conveyor) -> None:
    assert queue_and_priority(app, "tasks.add", routing_key="emails")[0] == "emails"


def test_celery_mapping_form_and_x_max_priority_are_read() -> None:
    app = Conveyor(
        "t",
        broker="memory://",
        task_queues={
            "images": {"exchange": "media", "routing_key": "image.compress"},
            "video": {"queue_arguments": {"x-max-priority": 3}},
        },
    )
    assert [(q.name, q.key, q.max_priority) for q in app.conf.task_queues] == [
        ("images", "image.compress", None),
        ("video", "video", 3),
    ]
    assert queue_and_priority(app, "x", routing_key="image.compress", exchange="media") == (
        "images",
        5,
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Exchange("broadcast", type="fanout"), "each message to one queue"),
        (lambda: Exchange("h", type="headers"), "only 'direct' and 'topic'"),
        (lambda: Queue("q", durable=False), "always durable"),
        (lambda: Queue("q", auto_delete=True), "always durable"),
        (lambda: Queue("q", queue_arguments={"x-message-ttl": 10}), "expires="),
        (lambda: Queue("q", max_priority=0), "1-255"),
        (lambda: Queue(""), "non-empty"),
    ],
)
def test_what_amqp_does_and_conveyor_cannot_is_refused(make: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()


def test_kombu_objects_and_duplicates_are_refused_with_the_replacement() -> None:
    class KombuQueue:  # what `from kombu import Queue` would give
        name = "q"

    with pytest.raises(ConfigurationError, match="from conveyor import Queue, Exchange"):
        Conveyor("t", broker="memory://", task_queues=[KombuQueue()])
    with pytest.raises(ConfigurationError, match="declares a queue twice"):
        Conveyor("t", broker="memory://", task_queues=[Queue("a"), "a"])


# -- annotations -----------------------------------------------------------------------------
def test_annotations_by_name_and_star_follow_celerys_order() -> None:
    app = Conveyor(
        "t",
        broker="memory://",
        task_annotations={
            "tasks.add": {"rate_limit": "10/s", "queue": "math", "priority": 7},
            "*": {"time_limit": 30, "priority": 2},  # as in Celery, '*' is applied last
        },
    )

    @app.task(name="tasks.add")
    def add() -> None: ...

    @app.task(name="tasks.other")
    def other() -> None: ...

    assert (add.rate_limit, add.queue, add.time_limit) == ("10/s", "math", 30)
    assert queue_and_priority(app, "tasks.add") == ("math", 2)
    assert (other.rate_limit, other.queue, other.time_limit) == (None, None, 30)


def test_annotation_objects_classes_functions_and_hooks() -> None:
    failures: list[str] = []

    def on_failure(self: Task[..., object], exc: BaseException, *rest: object) -> None:
        failures.append(f"{self.name}: {exc}")

    class Slow:
        def annotate(self, task: Task[..., object]) -> dict[str, object] | None:
            return {"soft_time_limit": 5} if task.name.startswith("slow.") else None

    app = Conveyor(
        "t",
        broker="memory://",
        task_annotations=[
            Slow,  # a class: instantiated once
            lambda task: {"max_retries": 9} if task.name == "fast.x" else None,
            {"*": {"on_failure": on_failure}},
        ],
    )

    @app.task(name="slow.x")
    def slow() -> None: ...

    @app.task(name="fast.x")
    def fast() -> None: ...

    assert (slow.soft_time_limit, slow.max_retries, fast.max_retries) == (5, 3, 9)
    fast.on_failure(ValueError("boom"), "id", (), {}, None)
    assert failures == ["fast.x: boom"]


def test_annotations_set_after_the_tasks_apply_when_the_app_is_finalized(app: Conveyor) -> None:
    app.conf.task_annotations = {"tasks.add": {"acks_late": False}}
    assert app.tasks["tasks.add"].acks_late is None
    app.finalize()
    assert app.tasks["tasks.add"].acks_late is False


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({"*": {"rate_limt": "1/s"}}, "did you mean 'rate_limit'"),
        ({"*": {"@__call__": print}}, "middleware"),
        ({"*": {"name": "x"}}, "set it on @app.task"),
        ({"*": "10/s"}, "mapping of task options"),
        (42, "mappings"),
        ("no_such_module_xyz:Thing", "cannot load"),
    ],
)
def test_bad_annotations_are_errors_naming_the_fix(annotations: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Conveyor("t", broker="memory://", task_annotations=annotations)


def test_bad_annotated_values_are_errors_when_set_or_returned() -> None:
    with pytest.raises(ConfigurationError, match="must be 0-9"):
        Conveyor("t", broker="memory://", task_annotations={"*": {"priority": 12}})
    with pytest.raises(ConfigurationError, match="invalid rate_limit"):
        Conveyor("t", broker="memory://", task_annotations={"a": {"rate_limit": "fast"}})
    app = Conveyor("t", broker="memory://")
    app.conf.task_annotations = lambda task: {"on_success": 1} if task.name == "f" else None
    with pytest.raises(ConfigurationError, match="must be a function"):
        app.task(name="f")(lambda: None)


# -- the default SQLite file -----------------------------------------------------------------
def test_default_sqlite_file_is_next_to_the_module_that_made_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONVEYOR_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    module = tmp_path / "proj" / "made_here.py"
    module.parent.mkdir()
    module.write_text("from conveyor import Conveyor\napp = Conveyor('proj')\n")
    urls = set()
    for cwd in (tmp_path, tmp_path / "proj", Path("/")):
        monkeypatch.chdir(cwd)
        namespace: dict[str, Any] = {}
        exec(compile(module.read_text(), str(module), "exec"), namespace)
        app = namespace["app"]
        urls.add((app.broker_url, app.result_backend_url))
    expected = f"sqlite:///{tmp_path}/proj/conveyor.sqlite3"
    assert urls == {(expected, expected)}
    # A bare sqlite:// given explicitly means the same file; named files stay as given.
    explicit = Conveyor("t", broker="sqlite://?timeout=5", result_backend="sqlite:///r.db")
    here = Path(__file__).parent
    assert explicit.broker_url == f"sqlite:///{here}/conveyor.sqlite3?timeout=5"
    assert explicit.result_backend_url == "sqlite:///r.db"


def test_regular_expression_routes_are_refused_naming_globs() -> None:
    with pytest.raises(ConfigurationError, match="Celery's regular-expression keys"):
        Conveyor("t", broker="memory://", task_routes={re.compile(r"feed\..*"): "feeds"})
