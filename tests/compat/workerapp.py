"""One worker app for every port, so that one worker per broker serves all compatibility
tests: the ports' tasks, registered under their own names (``tasks.add``, ``myapp.say``...)."""

from conveyor import Conveyor
from tests.compat.support import load_all, their_tasks

app = Conveyor("compat")
for port in load_all().values():
    for task in their_tasks(port.app):
        app.register(task)
