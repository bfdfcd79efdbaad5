"""``conveyor doctor``: check a deployment, print each finding with its fix."""

from __future__ import annotations

import click
from rich.markup import escape

from ..doctor import Finding, Level, diagnose
from ..loading import redact_text
from .base import State, app_option
from .output import console, print_json

_STYLE = {Level.OK: "green", Level.INFO: "cyan", Level.WARNING: "yellow", Level.ERROR: "bold red"}


@click.command()
@app_option
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Show only warnings and errors.")
@click.pass_obj
def doctor(state: State, app_spec: str | None, as_json: bool, quiet: bool) -> None:
    """Check the deployment (broker and result store servers, live workers, settings) and
    print each finding with a fix. Exits 1 if anything is a warning or an error."""
    app = state.app(app_spec)
    findings = [
        Finding(f.check, f.level, redact_text(f.message), redact_text(f.fix)) for f in diagnose(app)
    ]
    problems = [f for f in findings if f.level.is_problem]
    if as_json:
        print_json({"ok": not problems, "findings": [f.as_dict() for f in findings]})
    else:
        out = console()
        for finding in findings:
            if quiet and not finding.level.is_problem:
                continue
            style = _STYLE[finding.level]
            out.print(
                f"[{style}]{finding.level.value:>7}[/{style}]  [bold]{escape(finding.check)}"
                f"[/bold]: {escape(finding.message)}"
            )
            if finding.fix and finding.level is not Level.OK:
                out.print(f"         fix: {escape(finding.fix)}", style="dim")
        counts = {level: sum(f.level is level for f in findings) for level in Level}
        out.print(
            f"\n{counts[Level.ERROR]} error(s), {counts[Level.WARNING]} warning(s), "
            f"{counts[Level.INFO]} note(s), {counts[Level.OK]} ok"
        )
    if problems:
        raise click.exceptions.Exit(1)
