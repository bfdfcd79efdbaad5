"""Loading the ports of ``tests/compat/ports`` under the module names they have in Celery's
examples (several are called ``tasks`` or ``myapp``), fresh for each broker."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from conveyor import Conveyor, Task

PORTS = Path(__file__).resolve().parent / "ports"

#: (file under ports/, the module name it has in its example).
MODULES = [
    ("tutorial/tasks.py", "tasks"),
    ("app/myapp.py", "myapp"),
    ("periodic_tasks/myapp.py", "myapp"),
    ("resultgraph/tasks.py", "tasks"),
    ("seeds/tasks.py", "tasks"),
]
#: Packages: (directory put on sys.path, package, its app module).
PACKAGES = [("next_steps", "proj", "proj.celery")]


def load(relative: str, name: str) -> ModuleType:
    """Run ``ports/relative`` as a new module called ``name`` (not kept in sys.modules)."""
    spec = importlib.util.spec_from_file_location(name, PORTS / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_package(directory: str, package: str, app_module: str) -> ModuleType:
    """Import ``app_module`` of the package in ``ports/directory``, afresh."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]
    path = str(PORTS / directory)
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(app_module)


def load_all() -> dict[str, ModuleType]:
    """Every port, by its place under ports/ (``tutorial/tasks.py``, ``next_steps``)."""
    found = {relative: load(relative, name) for relative, name in MODULES}
    for directory, package, app_module in PACKAGES:
        found[directory] = load_package(directory, package, app_module)
    return found


def their_tasks(app: Conveyor) -> list[Task[..., object]]:
    """The tasks a port defined (the app's own, not Conveyor's built-in ones)."""
    app.finalize()  # imports include= modules, as a worker would
    return [task for name, task in app.tasks.items() if not name.startswith("conveyor.")]
