"""The seed layout with only the import changed (``celery.py`` -> ``conveyor.py``)."""

import os

from conveyor import Conveyor

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django.testproj.settings")

app = Conveyor("testproj")
app.config_from_object("django.conf:settings", namespace="CONVEYOR")
app.autodiscover_tasks()


@app.task(bind=True)
def debug_task(self):  # type: ignore[no-untyped-def]
    return f"Request: {self.request.id}"
