"""``manage.py conveyor_worker [-B]``: run the project's tasks in this process (interim)."""

import logging
import signal
import threading
import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from conveyor.contrib.django.worker import DjangoWorker
from conveyor.schedules import as_schedule
from django.core.management.base import BaseCommand, CommandParser

logger = logging.getLogger("conveyor.beat")


class Command(BaseCommand):
    help = "Run a Conveyor worker for this project (with -B: and the beat scheduler)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("-B", "--beat", action="store_true", help="embed the beat scheduler")
        parser.add_argument("-c", "--concurrency", type=int, default=4)
        parser.add_argument("-l", "--loglevel", default="INFO")

    def handle(self, *args: Any, **options: Any) -> None:
        from quick_publisher.conveyor import app

        logging.basicConfig(
            level=options["loglevel"].upper(),
            format="[%(asctime)s %(levelname)s %(name)s] %(message)s",
        )
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        worker = DjangoWorker(app, concurrency=options["concurrency"])
        worker.start()
        beat = threading.Thread(target=_beat, args=(app, stop), daemon=True)
        if options["beat"]:
            beat.start()
        self.stdout.write(f"worker ready: {app.broker_url}", self.style.SUCCESS)
        stop.wait()
        self.stdout.write("worker: warm shutdown")
        worker.stop(timeout=10)
        app.close()


def _beat(app: Any, stop: threading.Event) -> None:
    """Send each beat_schedule entry when due (one process only: no claims)."""
    tz = ZoneInfo(app.conf.timezone)
    entries = {
        name: (entry, as_schedule(entry["schedule"]))
        for name, entry in app.conf.beat_schedule.items()
    }
    now = datetime.now(UTC).astimezone(tz)
    due = {name: sched.next_after(now) for name, (_, sched) in entries.items()}
    while not stop.wait(max(0.05, 1 - time.time() % 1)):
        now = datetime.now(UTC).astimezone(tz)
        for name, (entry, sched) in entries.items():
            when = due[name]
            if when is None or when > now:
                continue
            logger.info("beat: sending %s (%s)", name, entry["task"])
            app.send_task(
                entry["task"],
                entry.get("args", ()),
                entry.get("kwargs", {}),
                headers={"periodic_entry": name},
            )
            due[name] = sched.next_after(now)
