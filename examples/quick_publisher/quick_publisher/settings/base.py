"""Settings shared by every environment. Paths that change at runtime live under ``var/``."""

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from conveyor.schedules import crontab

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(os.environ.get("QUICK_PUBLISHER_VAR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)  # the database, the broker file and uploads

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
DEBUG = False
ALLOWED_HOSTS: list[str] = []

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "accounts",
    "publisher",
    "feedback",
    "reports",
    "newsletters",
    "outbox",
    # Conveyor's Django integration: tasks sent on commit (delay_on_commit), the
    # `conveyor_worker` / `conveyor_beat` commands, the ORM result store, system checks.
    "conveyor.contrib.django",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "quick_publisher.urls"
WSGI_APPLICATION = "quick_publisher.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "quick_publisher" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "quick_publisher.context_processors.site",
            ],
        },
    },
]

# SQLite in WAL mode serves the web server and the worker processes at once; IMMEDIATE
# transactions and a busy timeout make concurrent writers wait instead of failing.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": VAR_DIR / "db.sqlite3",
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
}
# CONVEYOR_BROKER_URL=postgresql://... puts the site's tables in that database too: one
# database for everything, and tasks enqueued in the site's own transactions.
if os.environ.get("CONVEYOR_BROKER_URL", "").startswith(("postgresql://", "postgres://")):
    _pg = urlsplit(os.environ["CONVEYOR_BROKER_URL"])
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _pg.path.lstrip("/"),
            "USER": unquote(_pg.username or ""),
            "PASSWORD": unquote(_pg.password or ""),
            "HOST": _pg.hostname or "",
            "PORT": str(_pg.port or ""),
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en-us"
# The site's time zone: the daily report goes out at 07:30 here.
TIME_ZONE = "Asia/Shanghai"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "quick_publisher" / "static"]
MEDIA_URL = "media/"
MEDIA_ROOT = VAR_DIR / "media"

# Links in emails are built outside any request (in the worker), so the site needs its URL.
SITE_URL = os.environ.get("SITE_URL", "http://127.0.0.1:8000").rstrip("/")
SITE_NAME = "QuickPublisher"
MAILERS = {"default": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend"}}
DEFAULT_FROM_EMAIL = "QuickPublisher <noreply@quickpublisher.dev>"
SERVER_EMAIL = DEFAULT_FROM_EMAIL
#: Show the demo outbox (a page listing the mail the site sent) and link it in the menu.
OUTBOX_ENABLED = False

# -- Conveyor ------------------------------------------------------------------------------
# Every CONVEYOR_* setting configures the task queue (see quick_publisher/conveyor.py).
# The broker is the embedded SQLite file below unless CONVEYOR_BROKER_URL is set in the
# environment, e.g. CONVEYOR_BROKER_URL=redis://localhost:6379/0 (results follow the broker),
# or CONVEYOR_BROKER_URL=postgresql://user:pw@host/db (the site's tables move there too).
CONVEYOR_BROKER_URL = f"sqlite:///{VAR_DIR / 'conveyor.sqlite3'}"
if os.environ.get("CONVEYOR_BROKER_URL", "").split("://")[0] in ("amqp", "amqps", "pyamqp"):
    # RabbitMQ (CONVEYOR_BROKER_URL=pyamqp://guest@localhost//) holds messages only: results,
    # revocations and beat claims go to a file beside the database.
    CONVEYOR_RESULT_BACKEND = f"sqlite:///{VAR_DIR / 'conveyor-results.sqlite3'}"
CONVEYOR_TIMEZONE = TIME_ZONE
# delay() inside transaction.atomic() waits for the commit (on PostgreSQL in the site's
# database it is part of the transaction instead: see accounts/signals.py).
CONVEYOR_TASK_ENQUEUE_ON_COMMIT = True
CONVEYOR_BEAT_SCHEDULE = {
    "send-view-count-report": {
        "task": "publisher.tasks.send_view_count_report",
        "schedule": crontab(hour=7, minute=30),  # daily at 07:30, Asia/Shanghai
    },
}

# -- the site's own knobs ------------------------------------------------------------------
#: Recipients per newsletter task (each chunk is one small task).
NEWSLETTER_CHUNK_SIZE = 50
#: Seconds the annual report pauses per month it adds up: a stand-in for real, slow work
#: (0 in production; the demo sets it so that the progress bar can be watched).
REPORT_STEP_DELAY = 0.0
# Post summaries per author, across all workers (docs/flow-control.md): a stand-in for an API
# quota per customer. Summaries over it wait in the broker.
SUMMARY_RATE_LIMIT = "30/m"
