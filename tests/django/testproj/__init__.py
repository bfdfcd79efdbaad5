"""A small Django project laid out like the Celery tutorials, running on Conveyor."""

from .conveyor import app as conveyor_app

__all__ = ["conveyor_app"]
