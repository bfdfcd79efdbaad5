"""``manage.py conveyor_worker [-B]`` (interim): run the project's tasks in this process, and
with ``-B`` the beat scheduler too. Replaced by conveyor.contrib.django's command when it ships.
"""

import logging
import signal
import threading
from typing import Any

from conveyor.beat.scheduler import run_beat
from conveyor.contrib.django.worker import DjangoWorker
from django.core.management.base import BaseCommand, CommandParser


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
        beat = threading.Thread(target=run_beat, args=(app, stop), kwargs={"max_interval": 1.0})
        if options["beat"]:
            beat.start()
        self.stdout.write(self.style.SUCCESS(f"worker ready: {app.broker_url}"))
        stop.wait()
        self.stdout.write("worker: warm shutdown")
        if beat.is_alive():
            beat.join(timeout=5)
        worker.stop(timeout=10)
        app.close()
