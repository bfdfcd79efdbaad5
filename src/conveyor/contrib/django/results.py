"""The ORM result store: ``result_backend = "django://"`` (or ``"django://<db alias>"``).

Records live in :class:`~conveyor.contrib.django.models.TaskResult`, one row per task, so the
admin can list them. ``wait()`` polls with a short backoff (woken at once by writes made
through the same store object). ``join`` and ``claim`` rely on unique constraints and a row
lock, so they stay atomic with several workers on PostgreSQL, MySQL or SQLite.

A separate alias (``django://results``) pointing at the same database keeps result writes
out of the caller's transaction; with the default alias, a record written inside an atomic
block is rolled back with it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import Error, IntegrityError, connections, transaction
from django.db.models import Q
from django.utils import timezone

from conveyor.exceptions import ConfigurationError, ResultStoreError
from conveyor.results.base import PollingResultStore, ResultRecord

from .connections import track

T = TypeVar("T")

#: Columns of TaskResult read back into a ResultRecord, in ResultRecord's terms.
_FIELDS = (
    ("task_id", "id"),
    ("state", "state"),
    ("result", "result"),
    ("traceback", "traceback"),
    ("date_done", "date_done"),
    ("retries", "retries"),
    ("task_name", "name"),
    ("args", "args"),
    ("kwargs", "kwargs"),
    ("worker", "worker"),
    ("queue", "queue"),
    ("created_at", "created_at"),
    ("started_at", "started_at"),
    ("parent_id", "parent_id"),
    ("root_id", "root_id"),
    ("group_id", "group_id"),
    ("children", "children"),
    ("periodic_entry", "periodic_entry"),
)
_COLUMNS = [column for column, _ in _FIELDS]
_TIMES = frozenset({"date_done", "created_at", "started_at"})
_UPDATED = [c for c in _COLUMNS if c != "task_id"] + ["updated_at", "expires_at"]


def to_datetime(timestamp: float | None) -> datetime | None:
    """A POSIX timestamp as the datetime Django stores (naive local time if ``USE_TZ`` is off)."""
    if timestamp is None:
        return None

    moment = datetime.fromtimestamp(timestamp, UTC)
    if not settings.USE_TZ:
        naive: datetime = timezone.make_naive(moment, timezone.get_default_timezone())
        return naive
    return moment


def to_timestamp(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = timezone.make_aware(moment, timezone.get_default_timezone())
    return moment.timestamp()


def usable(conn: Any) -> bool:
    """Whether a connection still works (Django's SQLite backend always says it does)."""
    if conn.vendor != "sqlite":
        return bool(conn.is_usable())
    try:
        conn.connection.execute("SELECT 1")
    except Exception:
        return False
    return True


def _now() -> datetime:
    moment = to_datetime(time.time())
    assert moment is not None
    return moment


def _expiry(ttl: float | None) -> datetime | None:
    return None if ttl is None else to_datetime(time.time() + ttl)


def _live() -> Any:
    """Rows that have not expired."""

    return Q(expires_at__isnull=True) | Q(expires_at__gt=_now())


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class DjangoResultStore(PollingResultStore):
    """Task results in the project's database (app ``conveyor.contrib.django``)."""

    schemes = ("django",)

    #: Longest pause (s) between two reads while ``wait()`` waits for another process.
    poll_interval = 0.1
    first_pause = 0.005

    def __init__(
        self,
        url: str = "django://",
        *,
        expires: float | None = 86400.0,
        key_prefix: str = "conveyor",
    ) -> None:
        super().__init__(url, expires=expires, key_prefix=key_prefix)
        parts = urlsplit(url)
        self.alias = parts.netloc or parts.path.strip("/") or "default"
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self.kv: DjangoKeyValue = DjangoKeyValue(self)

    def __repr__(self) -> str:
        return f"<DjangoResultStore {self.alias}>"

    # -- plumbing --------------------------------------------------------------------------
    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` with a usable connection, turning database errors into
        ResultStoreError. Called from an event loop, it runs on a helper thread, since
        Django forbids blocking database calls there."""
        if _in_event_loop():
            with self._executor_lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(4, thread_name_prefix="conveyor-orm")
                executor = self._executor
            return executor.submit(self._guarded, fn).result()
        return self._guarded(fn)

    def _guarded(self, fn: Callable[[], T]) -> T:

        try:
            conn = connections[self.alias]
        except Exception as exc:  # ConnectionDoesNotExist, settings not configured
            raise ConfigurationError(
                f"result backend {self.url!r}: no Django database {self.alias!r} ({exc})"
            ) from exc
        if conn.connection is not None and conn.errors_occurred and not conn.in_atomic_block:
            # The last call failed: reconnect if the connection broke (server restart...).
            if usable(conn):
                conn.errors_occurred = False
            else:
                conn.close()
        try:
            return fn()
        except Error as exc:
            raise ResultStoreError(f"result store {self.alias!r}: {exc}") from exc
        except ImproperlyConfigured as exc:
            raise ConfigurationError(str(exc)) from exc
        finally:
            track()

    def notify(self) -> None:
        self._notify_local()

    # -- records ---------------------------------------------------------------------------
    def store(self, records: Sequence[ResultRecord]) -> None:
        if not records:
            return
        latest = {record.id: record for record in records}  # an upsert touches a row once
        self.call(lambda: self._store(list(latest.values())))
        self.notify()

    def _store(self, records: list[ResultRecord]) -> None:

        from .models import TaskResult  # models load once Django's apps are ready

        now = _now()
        expires = _expiry(self.expires)
        rows = [self._row(record, now, expires) for record in records]
        features = connections[self.alias].features
        manager = TaskResult.objects.using(self.alias)
        if features.supports_update_conflicts_with_target:
            manager.bulk_create(
                rows,
                update_conflicts=True,
                unique_fields=["namespace", "task_id"],
                update_fields=_UPDATED,
            )
            return
        if features.supports_update_conflicts:  # MySQL: the unique key is implied
            manager.bulk_create(rows, update_conflicts=True, update_fields=_UPDATED)
            return
        with transaction.atomic(using=self.alias):
            for row in rows:
                values = {field: getattr(row, field) for field in _UPDATED}
                manager.update_or_create(
                    namespace=row.namespace, task_id=row.task_id, defaults=values
                )

    def _row(self, record: ResultRecord, now: datetime, expires: datetime | None) -> Any:
        from .models import TaskResult  # models load once Django's apps are ready

        values = {
            column: (
                to_datetime(getattr(record, attr)) if attr in _TIMES else getattr(record, attr)
            )
            for column, attr in _FIELDS
        }
        return TaskResult(namespace=self.key_prefix, updated_at=now, expires_at=expires, **values)

    def _record(self, row: Sequence[Any]) -> ResultRecord:
        values: dict[str, Any] = {
            attr: (to_timestamp(value) if attr in _TIMES else value)
            for (_, attr), value in zip(_FIELDS, row, strict=True)
        }
        return ResultRecord(**values)

    def get(self, task_id: str) -> ResultRecord | None:
        return self.get_many([task_id])[0]

    def get_many(self, task_ids: Sequence[str]) -> list[ResultRecord | None]:
        if not task_ids:
            return []
        found = self.call(lambda: self._fetch(list(dict.fromkeys(task_ids))))
        return [found.get(task_id) for task_id in task_ids]

    def _fetch(self, task_ids: list[str]) -> dict[str, ResultRecord]:
        from .models import TaskResult  # models load once Django's apps are ready

        found: dict[str, ResultRecord] = {}
        manager = TaskResult.objects.using(self.alias)
        for start in range(0, len(task_ids), 500):
            rows = manager.filter(
                _live(), namespace=self.key_prefix, task_id__in=task_ids[start : start + 500]
            ).values_list(*_COLUMNS)
            for row in rows:
                record = self._record(row)
                found[record.id] = record
        return found

    def forget(self, task_ids: Sequence[str]) -> None:
        if not task_ids:
            return
        from .models import TaskResult  # models load once Django's apps are ready

        unique = list(dict.fromkeys(task_ids))
        manager = TaskResult.objects.using(self.alias)

        def forget() -> None:
            for start in range(0, len(unique), 500):
                manager.filter(
                    namespace=self.key_prefix, task_id__in=unique[start : start + 500]
                ).delete()

        self.call(forget)

    def cleanup(self) -> int:
        """Delete expired results, values and join sets; return how many."""
        from .models import (  # models load once Django's apps are ready
            ResultSet,
            ResultValue,
            TaskResult,
        )

        def cleanup() -> int:
            now = _now()
            removed = 0
            for model in (TaskResult, ResultValue, ResultSet):
                expired = model.objects.using(self.alias).filter(
                    namespace=self.key_prefix, expires_at__lte=now
                )
                removed += expired.delete()[1].get(model._meta.label, 0)
            return removed

        return self.call(cleanup)

    def close(self) -> None:
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


class DjangoKeyValue:
    """:class:`~conveyor.kv.KeyValue` in :class:`ResultValue` and :class:`ResultSet` rows
    of ``store``'s database, through its connection handling (:meth:`DjangoResultStore.call`)."""

    def __init__(self, store: DjangoResultStore) -> None:
        self._store = store
        self._alias = store.alias
        self._ns = store.key_prefix

    def join(self, key: str, member: str, ttl: float | None = None) -> int:

        from .models import ResultSet, ResultSetMember  # models load once Django's apps are ready

        def join() -> int:
            sets = ResultSet.objects.using(self._alias)
            with transaction.atomic(using=self._alias):
                sets.bulk_create([ResultSet(namespace=self._ns, key=key)], ignore_conflicts=True)
                # The row lock serializes joins of one key, so each sees its own count.
                row = sets.select_for_update().get(namespace=self._ns, key=key)
                if row.expires_at is not None and row.expires_at <= _now():
                    row.members.all().delete()  # an expired set starts over
                ResultSetMember.objects.using(self._alias).bulk_create(
                    [ResultSetMember(set=row, member=member)], ignore_conflicts=True
                )
                row.expires_at = _expiry(ttl)
                row.save(update_fields=["expires_at"])
                return int(row.members.count())

        return self._store.call(join)

    def claim(self, key: str, ttl: float | None = None) -> bool:

        from .models import ResultValue  # models load once Django's apps are ready

        def claim() -> bool:
            values = ResultValue.objects.using(self._alias)
            expires = _expiry(ttl)
            with transaction.atomic(using=self._alias):
                taken = values.filter(namespace=self._ns, key=key, expires_at__lte=_now()).update(
                    value=b"1", expires_at=expires
                )
                if taken:
                    return True
                try:
                    with transaction.atomic(using=self._alias):
                        values.create(namespace=self._ns, key=key, value=b"1", expires_at=expires)
                except IntegrityError:
                    return False
                return True

        return self._store.call(claim)

    def get_value(self, key: str) -> bytes | None:
        from .models import ResultValue  # models load once Django's apps are ready

        def get_value() -> bytes | None:
            value = (
                ResultValue.objects.using(self._alias)
                .filter(_live(), namespace=self._ns, key=key)
                .values_list("value", flat=True)
                .first()
            )
            return None if value is None else bytes(value)

        return self._store.call(get_value)

    def get_values(self, keys: Sequence[str]) -> dict[str, bytes]:
        from .models import ResultValue  # models load once Django's apps are ready

        def get_values() -> dict[str, bytes]:
            rows = (
                ResultValue.objects.using(self._alias)
                .filter(_live(), namespace=self._ns, key__in=list(dict.fromkeys(keys)))
                .values_list("key", "value")
            )
            return {key: bytes(value) for key, value in rows}

        return self._store.call(get_values)

    def set_value(self, key: str, value: bytes, ttl: float | None = None) -> None:

        from .models import ResultValue  # models load once Django's apps are ready

        def set_value() -> None:
            values = ResultValue.objects.using(self._alias)
            row = values.filter(namespace=self._ns, key=key)
            expires = _expiry(ttl)
            with transaction.atomic(using=self._alias):
                if row.update(value=value, expires_at=expires):
                    return
                try:
                    with transaction.atomic(using=self._alias):
                        values.create(namespace=self._ns, key=key, value=value, expires_at=expires)
                except IntegrityError:  # created meanwhile by another client
                    row.update(value=value, expires_at=expires)

        self._store.call(set_value)

    def delete_value(self, key: str) -> None:
        from .models import ResultSet, ResultValue  # models load once Django's apps are ready

        def delete_value() -> None:
            ResultValue.objects.using(self._alias).filter(namespace=self._ns, key=key).delete()
            ResultSet.objects.using(self._alias).filter(namespace=self._ns, key=key).delete()

        self._store.call(delete_value)

    def values(self, prefix: str) -> dict[str, bytes]:
        from .models import ResultValue  # models load once Django's apps are ready

        def values() -> dict[str, bytes]:
            rows = (
                ResultValue.objects.using(self._alias)
                .filter(_live(), namespace=self._ns, key__startswith=prefix)
                .values_list("key", "value")
            )
            # SQLite's and MySQL's LIKE ignore case: keep the exact matches only.
            return {key: bytes(value) for key, value in rows if key.startswith(prefix)}

        return self._store.call(values)
