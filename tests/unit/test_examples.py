"""The runnable examples the documentation points to keep running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_middleware_example_counts_outcomes() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "middleware" / "timing.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "states: {'FAILURE': 1, 'SUCCESS': 11}; slowest: example.nap" in proc.stdout
    )  # named after app.main


def test_operations_example_shows_events_control_and_pause() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "operations" / "watch.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "task-failed shop.boom ValueError: out of stock" in proc.stdout
    assert "ping: {'shop-worker': {'ok': 'pong'}}" in proc.stdout
    assert "paused: ['default']" in proc.stdout
