"""The producer side of the Django example, run by tests/compat/test_ports.py (not a port):
a Django process that sends the demo app's tasks and checks what the worker did."""

import django

import proj  # noqa: F401  (the app, as Django's startup would import it)

django.setup()

from demoapp.models import Widget
from demoapp.tasks import add, count_widgets, error_backoff_test, error_task, rename_widget, xsum

widget = Widget.objects.create(name="before")
assert add.delay(2, 2).get(timeout=30) == 4
assert xsum.delay([1, 2, 3]).get(timeout=30) == 6
assert count_widgets.delay().get(timeout=30) == 1
rename_widget.delay(widget.id, "after").get(timeout=30)
widget.refresh_from_db()
assert widget.name == "after", widget.name
# The autoretry tasks: the test reads their retry delays in the worker's log.
print("error_task", error_task.delay().id)
print("error_backoff_test", error_backoff_test.delay().id)
print("django example: ok")
