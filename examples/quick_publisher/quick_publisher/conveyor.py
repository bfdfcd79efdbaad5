"""The Conveyor app of the project.

Start a worker (with the beat scheduler embedded) with::

    conveyor worker -A quick_publisher -B          # or: python manage.py conveyor_worker -B

Settings come from Django's settings, every name prefixed with ``CONVEYOR_``
(``CONVEYOR_BROKER_URL``, ``CONVEYOR_BEAT_SCHEDULE``...). Tasks are found in the ``tasks``
module of each installed app.
"""

import os

from conveyor import Conveyor

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quick_publisher.settings.demo")

app = Conveyor("quick_publisher")
app.config_from_object("django.conf:settings", namespace="CONVEYOR")
app.autodiscover_tasks()
