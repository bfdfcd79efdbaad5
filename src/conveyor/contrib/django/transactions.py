"""Sending tasks when the database transaction commits.

:func:`install` gives a Conveyor app the two hooks ``apply_async(on_commit=True)``,
``delay_on_commit()`` and the ``task_enqueue_on_commit`` setting rely on (it lives in
:mod:`.schedules`, next to the beat runner it also installs).
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import DEFAULT_DB_ALIAS, connections, transaction


def _atomic_alias() -> str | None:
    """The database whose atomic block encloses this call (the default one first)."""
    aliases: list[str] = [
        conn.alias for conn in connections.all(initialized_only=True) if conn.in_atomic_block
    ]
    if not aliases:
        return None
    return DEFAULT_DB_ALIAS if DEFAULT_DB_ALIAS in aliases else aliases[0]


def in_transaction() -> bool:
    """True inside ``transaction.atomic()`` on any database of this thread."""
    return _atomic_alias() is not None


def transaction_connection() -> object | None:
    """The driver connection of the enclosing atomic block when it is a PostgreSQL database
    (None otherwise): a PostgreSQL broker in that database enqueues in it (psycopg 3 only),
    so the task commits or rolls back with the ORM writes."""
    alias = _atomic_alias()
    if alias is None:
        return None
    conn = connections[alias]
    if conn.vendor != "postgresql":
        return None
    conn.ensure_connection()
    # psycopg 3's connection; the broker declines anything else (psycopg2 among them).
    driver: object = conn.connection
    return driver


def commit_hook(send: Callable[[], None]) -> None:
    """Run ``send`` when the enclosing transaction commits; never if it rolls back.

    Outside an atomic block ``send`` runs at once. An error raised by ``send`` (say, the
    broker is down) propagates from the block's exit, after the commit, rather than being
    swallowed: the data is saved and the caller learns that the task was not sent.
    """
    alias = _atomic_alias()
    if alias is None:
        for conn in connections.all(initialized_only=True):
            if conn.connection is not None and not conn.get_autocommit():
                # Same rule as Django's own on_commit(): there is no commit to wait for.
                raise transaction.TransactionManagementError(
                    "on_commit cannot be used in manual transaction management "
                    f"(autocommit is off on database {conn.alias!r})"
                )
        send()
        return
    transaction.on_commit(send, using=alias)
