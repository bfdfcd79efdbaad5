"""Metric names, labels and buckets, and the table that maps celery-exporter's names to ours.

The label names are celery-exporter's (``name``, ``hostname``, ``queue_name``), so a dashboard
built for it adapts by renaming the metrics alone (:data:`CELERY_EXPORTER_RENAMES`)."""

from __future__ import annotations

#: Prefix of every metric.
PREFIX = "conveyor"

#: Per task name and queue (labels ``name``, ``hostname``, ``queue_name``): counters. The
#: key is the event, the value the metric name (``_total`` is added on exposition).
TASK_COUNTERS: dict[str, str] = {
    "sent": "conveyor_task_sent",
    "received": "conveyor_task_received",
    "started": "conveyor_task_started",
    "succeeded": "conveyor_task_succeeded",
    "failed": "conveyor_task_failed",
    "retried": "conveyor_task_retried",
    "revoked": "conveyor_task_revoked",
    "dead_lettered": "conveyor_task_dead_lettered",
}

#: Histograms per task name and queue.
RUNTIME = "conveyor_task_runtime_seconds"
QUEUE_WAIT = "conveyor_task_queue_wait_seconds"
HISTOGRAMS: dict[str, str] = {"runtime": RUNTIME, "queue_wait": QUEUE_WAIT}

#: Upper bounds (seconds) of the histogram buckets (+Inf is added): Prometheus's defaults,
#: stretched to ten minutes for long tasks and long waits.
BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)

#: Worker gauges (label ``hostname``), served by the worker and by ``conveyor metrics``.
WORKER_UP = "conveyor_worker_up"
WORKER_TASKS_ACTIVE = "conveyor_worker_tasks_active"
WORKER_SLOTS = "conveyor_worker_slots"
WORKER_SLOTS_IDLE = "conveyor_worker_slots_idle"
WORKER_PROCESSES = "conveyor_worker_processes"

#: Cluster gauges, served by ``conveyor metrics``.
WORKERS_ACTIVE = "conveyor_active_worker_count"
QUEUE_LENGTH = "conveyor_queue_length"
QUEUE_MESSAGES = "conveyor_queue_messages"
QUEUE_OLDEST_AGE = "conveyor_queue_oldest_message_age_seconds"
SCRAPE_ERRORS = "conveyor_exporter_scrape_errors"

#: celery-exporter's metric -> Conveyor's (same labels; see docs/monitoring.md).
CELERY_EXPORTER_RENAMES: dict[str, str] = {
    "celery_task_sent_total": "conveyor_task_sent_total",
    "celery_task_received_total": "conveyor_task_received_total",
    "celery_task_started_total": "conveyor_task_started_total",
    "celery_task_succeeded_total": "conveyor_task_succeeded_total",
    "celery_task_failed_total": "conveyor_task_failed_total",
    "celery_task_rejected_total": "conveyor_task_dead_lettered_total",
    "celery_task_revoked_total": "conveyor_task_revoked_total",
    "celery_task_retried_total": "conveyor_task_retried_total",
    "celery_task_runtime_bucket": "conveyor_task_runtime_seconds_bucket",
    "celery_task_runtime_sum": "conveyor_task_runtime_seconds_sum",
    "celery_task_runtime_count": "conveyor_task_runtime_seconds_count",
    "celery_worker_up": "conveyor_worker_up",
    "celery_worker_tasks_active": "conveyor_worker_tasks_active",
    "celery_active_worker_count": "conveyor_active_worker_count",
    "celery_active_process_count": "conveyor_worker_processes",
    "celery_queue_length": "conveyor_queue_length",
}
