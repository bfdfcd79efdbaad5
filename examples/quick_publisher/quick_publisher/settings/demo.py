"""The demo: runs on one machine with no mail server. Mail goes to the outbox (a table shown
at /outbox/), and the view-count report goes out every ten minutes instead of daily: often
enough to watch, not so often that it buries the rest of the outbox (one mail per author)."""

from conveyor.schedules import crontab

from .base import *  # noqa: F403

DEBUG = True
SECRET_KEY = "demo-only-not-secret"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

MAILERS = {"default": {"BACKEND": "outbox.backends.OutboxEmailBackend"}}
OUTBOX_ENABLED = True

CONVEYOR_BEAT_SCHEDULE = {
    "send-view-count-report": {
        "task": "publisher.tasks.send_view_count_report",
        "schedule": crontab(minute="*/10"),  # every ten minutes
    },
}
REPORT_STEP_DELAY = 0.4
