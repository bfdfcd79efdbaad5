# Seed 003's RabbitMQ configuration module, ported: `from kombu import` -> `from conveyor import`.
from conveyor import Exchange, Queue

BROKER_URL = "amqp://guest:guest@localhost:5672//"
CELERY_QUEUES = (
    Queue("default", Exchange("default"), routing_key="default"),
    Queue(
        "high_priority",
        Exchange("high_priority"),
        routing_key="high_priority",
        queue_arguments={"x-max-priority": "10"},
    ),
)
CELERY_DEFAULT_QUEUE = "default"
CELERY_DEFAULT_EXCHANGE = "default"
CELERY_DEFAULT_ROUTING_KEY = "default"
