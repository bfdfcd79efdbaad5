"""``conveyor migrate``: create or upgrade the tables of a PostgreSQL broker and result store.

Workers do this on start (several at once are safe: one migrates under an advisory lock, the
others wait for it); run it yourself when the application's database user may not create
tables (then set ``migrate=false`` in the URL) or before a deploy.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import click

from ..brokers import BrokerOptions, create_broker, redact_url
from ..results import create_result_store
from .base import State, app_option
from .output import console


@runtime_checkable
class Migratable(Protocol):
    """A broker or result store whose tables Conveyor creates and upgrades."""

    url: str

    def migrate(self) -> int: ...

    def close(self) -> None: ...


@click.command("migrate")
@app_option
@click.option(
    "--url",
    metavar="URL",
    help="Migrate the broker and result tables at this postgresql:// URL (no app needed).",
)
@click.pass_obj
def migrate_command(state: State, app_spec: str | None, url: str | None) -> None:
    """Create or upgrade the PostgreSQL tables of the app's broker and result store."""
    targets: list[tuple[str, object]] = []
    if url:
        targets = [
            ("broker", create_broker(url, BrokerOptions())),
            ("results", create_result_store(url, expires=None, key_prefix="conveyor")),
        ]
    else:
        app = state.app(app_spec)
        targets = [("broker", app.broker), ("results", app.results)]
    done = 0
    for what, target in targets:
        if not isinstance(target, Migratable):
            console().print(f"{what}: {type(target).__name__} has no tables to migrate")
            continue
        try:
            version = target.migrate()
        finally:
            if url:
                target.close()
        schema = getattr(target, "schema", "")
        console().print(f"{what}: {redact_url(target.url)} schema {schema} is at version {version}")
        done += 1
    if not done:
        raise click.ClickException("nothing to migrate: neither broker nor results is PostgreSQL")
