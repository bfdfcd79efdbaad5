"""Interim: a task runner that closes Django's database connections around each task, on
the thread that ran it (as ``conveyor.contrib.django.worker.DjangoTaskRunner`` will)."""

from conveyor.worker.execution import Job, Outcome, TaskRunner
from django.db import close_old_connections


class DjangoTaskRunner(TaskRunner):
    def run(self, job: Job) -> Outcome:
        close_old_connections()
        try:
            return super().run(job)
        finally:
            close_old_connections()
