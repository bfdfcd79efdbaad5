"""QuickPublisher: the Django site from the tutorials, running on Conveyor.

Importing the project package creates the Conveyor app, so that ``@shared_task`` functions
use it as soon as Django has started (the same pattern as Celery's ``proj/celery.py``).
"""

from .conveyor import app as conveyor_app

__all__ = ["conveyor_app"]
