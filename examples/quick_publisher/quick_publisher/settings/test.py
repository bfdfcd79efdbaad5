"""Unit tests (examples/quick_publisher/tests): the in-memory broker and an in-process worker."""

from .demo import *  # noqa: F403

# A file, not SQLite's shared in-memory database: the in-process worker's threads open their
# own connections, which must wait for locks (busy timeout) rather than fail.
DATABASES["default"]["TEST"] = {"NAME": VAR_DIR / "test-db.sqlite3"}  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CONVEYOR_BROKER_URL = "memory://"
REPORT_STEP_DELAY = 0.0
NEWSLETTER_CHUNK_SIZE = 2
