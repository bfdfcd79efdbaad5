# Celery's examples/next-steps/proj/tasks.py (no Celery import to swap).
from .celery import app


@app.task
def add(x, y):
    return x + y


@app.task
def mul(x, y):
    return x * y


@app.task
def xsum(numbers):
    return sum(numbers)
