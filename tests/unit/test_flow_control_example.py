"""The flow-control example docs/flow-control.md points to keeps running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_unique_and_batches_example() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "flow_control" / "unique_and_batches.py")],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for line in (
        "same task: True",
        "other report queued: True",
        "debounced, replaced: True",
        "keyed duplicate: True",
        "progress before the worker: 0/5",
        "all imported: 7 members, 0 failed",
        "import finished: 7 members, 0 failed",
        "report: report 42 rebuilt | search: indexed 'conv'",
        "progress at the end: 7/7 | completed: True",
    ):
        assert line in out, out
