# Celery's examples/django/demoapp/models.py.
from django.db import models


class Widget(models.Model):
    name = models.CharField(max_length=140)
