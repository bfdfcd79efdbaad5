"""A self-contained Conveyor demo: queue a few thousand tasks, run them, show the results.

Run it with ``scripts/quickstart`` (or ``.venv/bin/python examples/quickstart/demo.py``).
It uses the embedded default broker, so nothing needs to be installed or started.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from conveyor import Conveyor, Task

console = Console()


def build_app(broker: str) -> Conveyor:
    app = Conveyor("quickstart", broker=broker)

    @app.task(name="quickstart.word_count")
    def word_count(text: str) -> int:
        return len(text.split())

    @app.task(
        name="quickstart.flaky", bind=True, max_retries=3, retry_backoff=0.05, retry_jitter=False
    )
    def flaky(self: Task, n: int) -> str:  # type: ignore[type-arg]
        if self.request.retries < 2:
            raise self.retry(exc=ConnectionError("mail server busy"))
        return f"email {n} sent after {self.request.retries} retries"

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--broker", default=None, help="broker URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-demo-"))
    broker = args.broker or f"sqlite:///{workdir / 'demo.sqlite3'}"
    app = build_app(broker)
    word_count = app.tasks["quickstart.word_count"]
    flaky = app.tasks["quickstart.flaky"]
    console.print(f"[bold]Conveyor demo[/] broker: {app!r}")

    texts = [f"task number {i} says hello to the queue" * (1 + i % 3) for i in range(args.tasks)]
    started = time.perf_counter()
    results = app.send_many(word_count.s(text) for text in texts)
    sent = time.perf_counter() - started
    console.print(f"queued {len(results):,} tasks in one batch: {len(results) / sent:,.0f} tasks/s")
    retried = flaky.delay(1)

    columns = (TextColumn("running"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with (
        app.Worker(concurrency=4, lease_wait=0.05) as worker,
        Progress(*columns, console=console) as bar,
    ):
        job = bar.add_task("run", total=len(results))
        run_started = time.perf_counter()
        while worker.processed < len(results) + 1:
            bar.update(job, completed=min(worker.processed, len(results)))
            time.sleep(0.05)  # refresh rate of the progress bar
        bar.update(job, completed=len(results))
        elapsed = time.perf_counter() - run_started
        total_words = sum(r.get(timeout=30) for r in results)
        retry_message = retried.get(timeout=30)

    table = Table(title="Results")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("tasks run", f"{len(results):,}")
    table.add_row("throughput (one process, 4 threads)", f"{len(results) / elapsed:,.0f} tasks/s")
    table.add_row("sum of word counts", f"{total_words:,}")
    table.add_row("a task that retried", retry_message)
    table.add_row("first result", f"{results[0].id[:8]}… = {results[0].get()} ({results[0].state})")
    console.print(table)
    app.close()


if __name__ == "__main__":
    main()
