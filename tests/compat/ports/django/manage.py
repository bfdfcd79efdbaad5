#!/usr/bin/env python
# Celery's examples/django/manage.py (no Celery import to swap).
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
