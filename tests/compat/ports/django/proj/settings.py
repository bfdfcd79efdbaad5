# The settings of Celery's examples/django: its Celery lines as written; the Django part cut
# to what the example uses, with the database file from $COMPAT_DJANGO_DB (a test's tmp dir).
import os

# Celery settings

CELERY_BROKER_URL = "amqp://guest:guest@localhost"

#: Only add pickle to this list if your broker is secured
#: from unwanted access (see userguide/security.html)
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = "db+sqlite:///results.sqlite"
CELERY_TASK_SERIALIZER = "json"

SECRET_KEY = "compat-tests-only"
DEBUG = False
USE_TZ = True
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("COMPAT_DJANGO_DB", "test.db"),
    }
}
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "demoapp",
]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
