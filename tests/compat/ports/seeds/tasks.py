# The task code of seed 003 ("Celery task definition and configuration"), ported:
# `from celery import Celery, chain, group` -> conveyor. Its `current_app.task` example, the
# custom Task classes overriding __call__ (CustomTask, GeoTask) and link=/link_error= with
# plain functions are LEFT OUT: runtime items of issue 12 (see the report).
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


app.conf.beat_schedule = {
    "add-every-minute": {
        "task": "tasks.add",
        "schedule": crontab(minute="*/1"),
        "args": (16, 16),
    },
}
