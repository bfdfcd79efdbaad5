#!/usr/bin/env python
"""manage.py of the test project."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # Import from the repository root (the test project is tests.django.testproj), not from
    # this directory, whose name would shadow the django package.
    sys.path[0] = str(Path(__file__).resolve().parents[2])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django.testproj.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
