"""Settings of the test project. The environment picks the database file and broker, so
worker processes started by the tests share them with the test process."""

import os
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "Europe/Berlin"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "conveyor.contrib.django",
    "tests.django.testproj.shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.django.testproj.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# A file database (WAL, IMMEDIATE transactions): worker threads and processes share it.
_DB = os.environ.get("TESTPROJ_DB") or str(
    Path(tempfile.gettempdir()) / f"conveyor-testproj-{os.getpid()}.sqlite3"
)
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": _DB,
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        "TEST": {"NAME": _DB},
    }
}
# Or PostgreSQL (tests/django/test_postgres_*.py): postgresql://user@host:port/name.
if _PG := os.environ.get("TESTPROJ_DATABASE_URL"):
    from urllib.parse import urlsplit

    _url = urlsplit(_PG)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _url.path.lstrip("/"),
            "USER": _url.username or "",
            "HOST": _url.hostname or "",
            "PORT": str(_url.port or ""),
            # Django's own psycopg pool (Django 5.1+), when a test asks for it.
            "OPTIONS": {"pool": True} if os.environ.get("TESTPROJ_DATABASE_POOL") else {},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"

CONVEYOR_BROKER_URL = os.environ.get("TESTPROJ_BROKER", "memory://")
CONVEYOR_RESULT_BACKEND = os.environ.get("TESTPROJ_RESULTS", "django://")
CONVEYOR_RESULT_EXTENDED = True
CONVEYOR_BROKER_LEASE_TIMEOUT = 2.0
CONVEYOR_BROKER_SWEEP_INTERVAL = 0.5

TASKS = {
    "default": {
        "BACKEND": "conveyor.contrib.django.backend.ConveyorBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {"max_retries": 2, "retry_backoff": False, "default_retry_delay": 0.05},
    }
}
