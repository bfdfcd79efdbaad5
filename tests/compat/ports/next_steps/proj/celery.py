# Celery's examples/next-steps/proj/celery.py, ported: `from celery import Celery` -> conveyor.
from conveyor import Conveyor

app = Conveyor("proj", broker="amqp://", backend="rpc://", include=["proj.tasks"])

# Optional configuration, see the application user guide.
app.conf.update(
    result_expires=3600,
)

if __name__ == "__main__":
    app.start()
