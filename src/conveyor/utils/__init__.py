"""Helpers with Celery's import paths (``conveyor.utils.log``)."""
