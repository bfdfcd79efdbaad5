"""``conveyor dashboard``: serve the web dashboard with uvicorn."""

from __future__ import annotations

import os

import click

from ..exceptions import ConfigurationError
from .base import State, app_option


@click.command("dashboard")
@app_option
@click.option(
    "--bind",
    default="127.0.0.1:5555",
    show_default=True,
    metavar="HOST:PORT",
    help="Address to listen on; other than loopback needs --basic-auth or --token.",
)
@click.option("--basic-auth", metavar="USER:PASSWORD", envvar="CONVEYOR_DASHBOARD_BASIC_AUTH")
@click.option("--token", metavar="TOKEN", envvar="CONVEYOR_DASHBOARD_TOKEN")
@click.option("--read-only", is_flag=True, help="Show everything, change nothing.")
@click.option(
    "--history",
    metavar="FILE",
    envvar="CONVEYOR_DASHBOARD_HISTORY",
    help="The task-history SQLite file (default: beside a sqlite:// broker, else in "
    "$XDG_STATE_HOME/conveyor).",
)
@click.pass_obj
def dashboard_command(
    state: State,
    app_spec: str | None,
    bind: str,
    basic_auth: str | None,
    token: str | None,
    read_only: bool,
    history: str | None,
) -> None:
    """Serve the web dashboard (needs conveyor[dashboard])."""
    try:
        import uvicorn

        from ..dashboard import DashboardAuth, create_dashboard
        from ..dashboard.security import check_exposure
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs its extra: pip install 'conveyor[dashboard]' ({exc.name} missing)"
        ) from None
    host, colon, port_text = bind.rpartition(":")
    if not colon or not port_text.isdigit():
        raise click.BadParameter("give HOST:PORT, e.g. 127.0.0.1:5555", param_hint="--bind")
    host = host.strip("[]")
    try:
        auth = DashboardAuth.parse(basic_auth, token)
        check_exposure(host, auth)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    secret = os.environ.get("CONVEYOR_DASHBOARD_SECRET")
    app = state.app(app_spec)
    web = create_dashboard(
        app,
        auth=auth,
        read_only=read_only,
        secret=secret.encode() if secret else None,
        history=history,
    )
    shown_host = f"[{host}]" if ":" in host else host
    click.echo(
        f"dashboard of {app.main or 'conveyor'} on http://{shown_host}:{port_text}/", err=True
    )
    uvicorn.run(
        web,
        host=host,
        port=int(port_text),
        log_level="warning",
        timeout_graceful_shutdown=3,
        proxy_headers=False,
    )
