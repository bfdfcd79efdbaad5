# The task code of seed 003 ("Celery task definition and configuration"), ported:
# `from celery import Celery, Task, chain, current_app, group` -> conveyor. LEFT OUT: link=/
# link_error= with plain functions, which Celery cannot send either (Conveyor refuses them at
# the call site: tests/unit/test_celery_port.py).
from conveyor import Conveyor
from conveyor.schedules import crontab

app = Conveyor("tasks", broker="pyamqp://guest@localhost//")


@app.task
def add(x, y):
    return x + y


@app.task
def mul(x, y):
    return x * y


@app.task
def greet(first_name, last_name):
    return f"Hello {first_name} {last_name}"


@app.task(bind=True, autoretry_for=(Exception,), retry_backoff=True)
def error_task(self):
    raise Exception("Error occurred")


from conveyor import current_app


@current_app.task(bind=True, max_retries=3, default_retry_delay=5)
def retry_task(self, exc, interval=5):
    raise exc


app.conf.beat_schedule = {
    "add-every-minute": {
        "task": "tasks.add",
        "schedule": crontab(minute="*/1"),
        "args": (16, 16),
    },
}


# Seed 003, 5.3.1: a custom Task class that logs around every run (its `***(...)` lines are the
# tutorial's garbled `logger.info(...)`).
import logging

from conveyor import Task

logger = logging.getLogger(__name__)


class CustomTask(Task):
    abstract = True

    def __call__(self, *args, **kwargs):
        try:
            logger.info(f"Starting task {self.name}")
            result = super().__call__(*args, **kwargs)
            logger.info(f"Task {self.name} completed successfully")
            return result
        except Exception as e:
            logger.exception(f"Error in task {self.name}: {e}")
            raise


@app.task(base=CustomTask)
def my_task():
    return "done"


# Seed 003, 5.2.2: a Task class choosing a queue per call from the request.
def get_location_from_request(*args, **kwargs):  # the tutorial's own helper, not shown there
    return kwargs.get("location", "eu")


class GeoTask(Task):
    def __call__(self, *args, **kwargs):
        if self.request.is_eager:
            return super().__call__(*args, **kwargs)
        location = get_location_from_request(*args, **kwargs)
        queue_name = f"geo_{location}"
        self.request.delivery_info["routing_key"] = queue_name
        return super().__call__(*args, **kwargs)


@app.task(base=GeoTask)
def process_data(data, location="eu"):
    return {"data": data, "location": location}
