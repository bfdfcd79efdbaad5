# Celery's examples/periodic-tasks/myapp.py, ported: `from celery import Celery` -> conveyor.
from conveyor import Conveyor

app = Conveyor(
    # The name of this module, for generating task names when executed as __main__.
    "myapp",
    broker="amqp://guest@localhost//",
)
app.conf.timezone = "UTC"


@app.task
def say(what):
    print(what)


@app.on_after_configure.connect
def setup_periodic_tasks(sender, **kwargs):
    # Calls say('hello') every 10 seconds.
    sender.add_periodic_task(10.0, say.s("hello"), name="add every 10")


if __name__ == "__main__":
    app.start()
