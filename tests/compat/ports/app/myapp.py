# Celery's examples/app/myapp.py, ported: `from celery import Celery` -> conveyor.
#   (window1)$ python myapp.py worker -l INFO      [app.start(): see the report of issue 12]
#   (window1)$ conveyor -A myapp worker -l INFO
from time import sleep

from conveyor import Conveyor

app = Conveyor(
    "myapp",
    broker="amqp://guest@localhost//",
    # ## add result backend here if needed.
    # backend='rpc'
    task_acks_late=True,
)


@app.task
def add(x, y):
    sleep(10)
    return x + y


if __name__ == "__main__":
    app.start()
