"""The Django integration's ``conveyor.worker_setup`` entry point.

It lives outside the ``conveyor.contrib.django`` package on purpose: every worker consults its
entry points, and importing that package imports Django. Here Django is imported only for a
Django project - one whose app module set ``DJANGO_SETTINGS_MODULE``, as with Celery.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.worker.execution import TaskRunner


def worker_setup(app: Conveyor) -> type[TaskRunner] | None:
    """Set Django up for ``app``'s worker and return its task runner; None outside Django."""
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return None
    # Deferred: Django is imported only by workers of Django projects.
    from .django.worker import worker_setup as django_worker_setup

    return django_worker_setup(app)
