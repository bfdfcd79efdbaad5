"""Browser tests (tests/e2e): the demo with a report every few seconds and a database of
its own (QUICK_PUBLISHER_VAR points at a temporary directory)."""

from conveyor.schedules import every

from .demo import *  # noqa: F403

CONVEYOR_BEAT_SCHEDULE = {
    "send-view-count-report": {
        "task": "publisher.tasks.send_view_count_report",
        "schedule": every(3),
    },
}
REPORT_STEP_DELAY = 0.25
