# Celery's examples/django/demoapp/tasks.py, ported: `from celery import shared_task` ->
# conveyor. Its retry_kwargs tasks (error_task, error_backoff_test) are LEFT OUT until the
# runtime items of issue 12 honour retry_kwargs' countdown (see the report).
from demoapp.models import Widget

from conveyor import shared_task


@shared_task
def add(x, y):
    return x + y


@shared_task
def mul(x, y):
    return x * y


@shared_task
def xsum(numbers):
    return sum(numbers)


@shared_task
def count_widgets():
    return Widget.objects.count()


@shared_task
def rename_widget(widget_id, name):
    w = Widget.objects.get(id=widget_id)
    w.name = name
    w.save()
