# Celery's examples/tutorial/tasks.py, ported: `from celery import Celery` -> conveyor.
from conveyor import Conveyor

app = Conveyor("tasks", broker="amqp://")


@app.task()
def add(x, y):
    return x + y


if __name__ == "__main__":
    app.start()
