"""What becomes of each Celery 5 setting in Conveyor: the table (applied by
:mod:`conveyor.celery_names`, which :mod:`conveyor.config` uses).

Every Celery setting, by its lowercase name (and its old uppercase name in :data:`OLD_NAMES`),
has one fate:

* :class:`Honoured`: the value is read as a Conveyor setting (and checked like it). Old
  uppercase names warn once (``CeleryNameWarning``), naming the new name.
* :class:`Refused`: a :class:`~conveyor.exceptions.ConfigurationError` that says what to use
  instead or why Conveyor has no such thing. Values in ``allowed`` (Celery's default, or a value
  meaning what Conveyor does anyway) are accepted and ignored, so generated configs still load.
* :class:`Ignored`: accepted with any value and dropped, because it cannot change what Conveyor
  does (AMQP-only knobs, options of result backends whose URLs Conveyor refuses, ...).

``docs/celery-settings.md`` is generated from this table (``scripts/celery-settings-doc``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Honoured:
    """Read as the Conveyor setting ``setting``."""

    setting: str


@dataclass(frozen=True, slots=True)
class Refused:
    """An error saying ``reason``; values in ``allowed`` are accepted and ignored."""

    reason: str
    allowed: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class Ignored:
    """Accepted with any value and dropped: ``reason`` says why that cannot surprise."""

    reason: str


type Fate = Honoured | Refused | Ignored

_NO_AMQP = (
    "Celery's kombu/AMQP tuning: Conveyor's RabbitMQ broker manages its connection, exchanges "
    "and queues itself (docs/rabbitmq.md)"
)
_QUEUE_TYPE = (
    "Conveyor's RabbitMQ queues are quorum queues; for classic ones set "
    "broker_transport_options={'queue_type': 'classic'}"
)
_NO_EVENTS = (
    "Conveyor keeps its events in the broker's bounded event stream (`conveyor events`, "
    "app.events; docs/events.md), not in AMQP event queues"
)
_IN_URL = "put it in broker_url (e.g. redis://user:password@host:6379/0)"
_IN_BACKEND_URL = "put it in the result_backend URL (e.g. redis://:password@host:6379/1)"
_NO_COMPRESSION = (
    "Conveyor sends and stores JSON uncompressed; messages are capped by message_max_bytes"
)
_NO_SIGNING = (
    "Conveyor signs messages with shared HMAC keys, not certificates (the 'auth' serializer): "
    "set message_signing_keys (docs/security.md)"
)
_NO_FILE = "Conveyor's beat keeps its state in the broker, so there is no schedule file to name"
_NO_REMOTE = "Celery's remote-control broadcast queues; Conveyor has none"
_ETA_IN_BROKER = "ETA/countdown tasks wait in the broker, not in worker memory"
_POOL = (
    "Conveyor's worker is prefork only: worker_concurrency child processes, each running sync "
    "tasks in worker_threads threads and async tasks on an event loop; eventlet/gevent/threads "
    "pools are not supported (for a single process use `conveyor worker --pool solo`)"
)
_ACKS = (
    "Conveyor acknowledges failed and timed-out tasks (their FAILURE is stored); only a lost "
    "worker's task is delivered again, up to task_max_deliveries"
)
_ROUTING = (
    "Conveyor routes by queue name: use task_default_queue and task_routes (a call's "
    "routing_key= is matched against the conveyor.Queue declarations in task_queues)"
)


def _backend(name: str) -> Ignored:
    return Ignored(
        f"read only by Celery's {name} result backend; Conveyor has none "
        "(a result_backend URL for it is refused)"
    )


def _no(reason: str, *allowed: object) -> Refused:
    return Refused(reason, (None, *allowed))


_BACKENDS: Final = {
    "arangodb": "ArangoDB",
    "azureblockblob": "Azure Block Blob",
    "cassandra": "Cassandra",
    "cosmosdbsql": "CosmosDB",
    "couchbase": "Couchbase",
    "database": "SQLAlchemy (db+)",
    "elasticsearch": "Elasticsearch",
    "gcs": "Google Cloud Storage",
    "mongodb": "MongoDB",
    "s3": "S3",
    "cache": "cache (memcached)",
}

#: Every Celery 5 setting (lowercase name) that is not read from a result backend of its own.
_TABLE: dict[str, Fate] = {
    # -- honoured: Conveyor has the same setting ---------------------------------------
    **{
        name: Honoured(name)
        for name in (
            "accept_content",
            "beat_schedule",
            "broker_transport_options",
            "broker_url",
            "enable_utc",
            "imports",
            "include",
            "result_backend",
            "result_backend_transport_options",
            "result_expires",
            "result_extended",
            "result_serializer",
            "task_acks_late",
            "task_always_eager",
            "task_annotations",
            "task_default_priority",
            "task_default_queue",
            "task_eager_propagates",
            "task_ignore_result",
            "task_publish_retry",
            "task_publish_retry_policy",
            "task_queues",
            "task_routes",
            "task_serializer",
            "task_soft_time_limit",
            "task_time_limit",
            "task_track_started",
            "timezone",
            "worker_concurrency",
            "worker_max_memory_per_child",
            "worker_max_tasks_per_child",
            "worker_prefetch_multiplier",
        )
    },
    # -- beat ----------------------------------------------------------------------------
    "beat_cron_starting_deadline": _no("Conveyor's beat has no catch-up deadline for cron entries"),
    "beat_max_loop_interval": _no(
        "pass --max-interval to `conveyor beat` (or max_interval= to app.run_beat)", 0
    ),
    "beat_schedule_filename": Ignored(_NO_FILE),
    "beat_scheduler": _no(
        "Conveyor's beat reads beat_schedule; with Django, conveyor.contrib.django keeps "
        "schedules in the database (docs/django.md)",
        "celery.beat:PersistentScheduler",
        "celery.beat.PersistentScheduler",
    ),
    "beat_sync_every": Ignored(_NO_FILE),
    # -- broker --------------------------------------------------------------------------
    "broker_channel_error_retry": _no("Conveyor has no switch for retrying channel errors", False),
    "broker_connection_max_retries": _no("Conveyor has no broker reconnection limit", 100),
    "broker_connection_retry": _no("Conveyor has no switch to stop reconnecting", True),
    "broker_connection_retry_on_startup": _no(
        "Conveyor has no switch to stop connecting at startup", True
    ),
    "broker_connection_timeout": _no(
        "set broker_transport_options={'socket_connect_timeout': seconds} (Redis)", 4, 4.0
    ),
    "broker_failover_strategy": _no("Conveyor connects to one broker_url; no failover list"),
    "broker_heartbeat": Ignored(
        f"{_NO_AMQP}; Conveyor's own leases are renewed automatically (broker_lease_timeout)"
    ),
    "broker_heartbeat_checkrate": Ignored(_NO_AMQP),
    "broker_host": _no(_IN_URL),
    "broker_login_method": Ignored(_NO_AMQP),
    "broker_native_delayed_delivery_queue_type": Ignored(_NO_AMQP),
    "broker_password": _no(_IN_URL),
    "broker_pool_acquire_timeout": _no("Conveyor has no broker pool acquire timeout"),
    "broker_pool_limit": _no("set broker_transport_options={'max_connections': n} (Redis)", 10),
    "broker_port": _no(_IN_URL),
    "broker_read_url": _no("Conveyor reads and writes through one broker_url"),
    "broker_transport": _no("the broker is chosen by broker_url's scheme"),
    "broker_use_ssl": _no(
        "use a rediss:// broker_url and ssl_* keys in broker_transport_options", False
    ),
    "broker_user": _no(_IN_URL),
    "broker_vhost": _no(_IN_URL),
    "broker_write_url": _no("Conveyor reads and writes through one broker_url"),
    # -- remote control and events -------------------------------------------------------
    "control_exchange": Ignored(_NO_REMOTE),
    "control_queue_durable": Ignored(_NO_REMOTE),
    "control_queue_exclusive": Ignored(_NO_REMOTE),
    "control_queue_expires": Ignored(_NO_REMOTE),
    "control_queue_ttl": Ignored(_NO_REMOTE),
    "event_exchange": Ignored(_NO_EVENTS),
    "event_queue_durable": Ignored(_NO_EVENTS),
    "event_queue_exclusive": Ignored(_NO_EVENTS),
    "event_queue_expires": Ignored(_NO_EVENTS),
    "event_queue_prefix": Ignored(_NO_EVENTS),
    "event_queue_ttl": Ignored(_NO_EVENTS),
    "event_serializer": _no("Conveyor only speaks JSON", "json"),
    "worker_send_task_events": Honoured("worker_send_task_events"),
    "task_send_sent_event": Honoured("task_send_sent_event"),
    "worker_enable_remote_control": _no(
        "Conveyor's `conveyor inspect` reads the broker; there is no remote control to turn off",
        True,
    ),
    "worker_pool_restarts": Ignored(
        "enables Celery's pool_restart remote command; Conveyor has none"
    ),
    # -- Celery's Redis result backend options -------------------------------------------
    "redis_backend_use_ssl": _no("use a rediss:// result_backend URL"),
    "redis_db": _no(_IN_BACKEND_URL),
    "redis_host": _no(_IN_BACKEND_URL),
    "redis_password": _no(_IN_BACKEND_URL),
    "redis_port": _no(_IN_BACKEND_URL),
    "redis_username": _no(_IN_BACKEND_URL),
    "redis_max_connections": _no("Conveyor's Redis result store sizes its own pool"),
    "redis_retry_on_timeout": _no("Conveyor's Redis clients retry on their own terms", False),
    "redis_socket_connect_timeout": _no("Conveyor's Redis clients set their own timeouts"),
    "redis_socket_keepalive": _no("Conveyor's Redis clients set keepalive themselves", False),
    "redis_socket_timeout": _no("Conveyor's Redis clients set their own timeouts", 120, 120.0),
    # -- results -------------------------------------------------------------------------
    "result_accept_content": _no(
        "Conveyor only speaks JSON", "json", ["json"], ("json",), ["application/json"]
    ),
    "result_backend_always_retry": _no(
        "Conveyor has no switch for retrying result store errors", False
    ),
    "result_backend_base_sleep_between_retries_ms": Ignored(
        "only used with result_backend_always_retry=True, which is refused"
    ),
    "result_backend_max_retries": Ignored(
        "only used with result_backend_always_retry=True, which is refused"
    ),
    "result_backend_max_sleep_between_retries_ms": Ignored(
        "only used with result_backend_always_retry=True, which is refused"
    ),
    "result_cache_max": Ignored(
        "a client-side cache of fetched results: it changes memory use, never a result"
    ),
    "result_chord_join_timeout": Ignored("Conveyor's chords are not joined by polling"),
    "result_chord_retry_interval": Ignored("Conveyor's chords are not joined by polling"),
    "result_compression": _no(_NO_COMPRESSION),
    "result_exchange": Ignored(_NO_AMQP),
    "result_exchange_type": Ignored(_NO_AMQP),
    "result_persistent": Ignored(_NO_AMQP),
    # -- security ------------------------------------------------------------------------
    "security_cert_store": _no(_NO_SIGNING),
    "security_certificate": _no(_NO_SIGNING),
    "security_digest": _no(_NO_SIGNING, "sha256"),
    "security_key": _no(_NO_SIGNING),
    "security_key_password": _no(_NO_SIGNING),
    # -- tasks ---------------------------------------------------------------------------
    "task_acks_on_failure": _no(_ACKS, True),
    "task_acks_on_failure_or_timeout": _no(_ACKS, True),
    "task_acks_on_timeout": _no(_ACKS, True),
    "task_allow_error_cb_on_chord_header": _no(
        "Conveyor calls a chord's error callback once, for the chord", False
    ),
    "task_compression": _no(_NO_COMPRESSION),
    "task_create_missing_queue_exchange_type": Ignored(_NO_AMQP),
    "task_create_missing_queue_type": _no(_QUEUE_TYPE, "quorum"),
    "task_create_missing_queues": _no(
        "Conveyor queues exist as soon as a task is sent to them", True
    ),
    "task_default_delivery_mode": _no(
        "Conveyor has no transient delivery mode", 2, "2", "persistent"
    ),
    # The default queue's own name (Celery's default) changes nothing: accepted.
    "task_default_exchange": _no(_ROUTING, "default", "celery"),
    "task_default_exchange_type": _no(_ROUTING, "direct"),
    "task_default_queue_type": _no(_QUEUE_TYPE, "quorum"),
    "task_default_rate_limit": _no("set rate_limit= on each task"),
    "task_default_routing_key": _no(_ROUTING, "default", "celery"),
    "task_inherit_parent_priority": _no(
        "Conveyor does not pass priority from a task to the tasks it sends", False
    ),
    "task_protocol": _no("Conveyor has its own JSON message format", 2),
    "task_queue_max_priority": _no(
        "Conveyor honours priorities 0-9 on every queue; to cap one queue, declare "
        "conveyor.Queue(name, max_priority=n) in task_queues"
    ),
    "task_reject_on_worker_lost": _no(
        "Conveyor delivers a lost worker's task again, up to task_max_deliveries "
        "(task_max_deliveries=1: never again)",
        True,
    ),
    "task_remote_tracebacks": _no(
        "Conveyor stores the worker's traceback as text (AsyncResult.traceback)", False
    ),
    "task_store_eager_result": Ignored(
        "Conveyor's eager mode always stores results (docs/tasks.md)"
    ),
    "task_store_errors_even_if_ignored": _no(
        "Conveyor has no such option: drop ignore_result to keep errors", False
    ),
    # -- worker --------------------------------------------------------------------------
    "worker_agent": _no("Conveyor has no worker agents"),
    "worker_autoscaler": _no(
        "Conveyor's autoscaler is built in: `conveyor worker --autoscale MAX,MIN`",
        "celery.worker.autoscale:Autoscaler",
    ),
    "worker_cancel_long_running_tasks_on_connection_loss": _no(
        "Conveyor's leases bring a task back only after broker_lease_timeout", False
    ),
    "worker_consumer": _no(
        "Conveyor's worker has no pluggable consumer", "celery.worker.consumer:Consumer"
    ),
    "worker_deduplicate_successful_tasks": _no(
        "Conveyor has no result check before running a delivered task", False
    ),
    "worker_detect_quorum_queues": Ignored(_NO_AMQP),
    "worker_direct": _no("Conveyor has no per-worker queues", False),
    "worker_disable_prefetch": _no(
        "set worker_prefetch_multiplier=1 (one message per free slot, no adaptive prefetch)", False
    ),
    "worker_disable_rate_limits": _no("remove rate_limit= from the tasks instead", False),
    "worker_enable_prefetch_count_reduction": Ignored(_NO_AMQP),
    "worker_enable_soft_shutdown_on_idle": _no(
        "Conveyor's warm shutdown waits worker_shutdown_timeout", False
    ),
    "worker_eta_task_limit": Ignored(_ETA_IN_BROKER),
    "worker_hijack_root_logger": _no("Conveyor's worker always configures the root logger", True),
    "worker_log_color": Ignored("colours of the worker's console output only"),
    "worker_log_format": _no(
        "Conveyor's worker log format is fixed (conveyor.loading.LOG_FORMAT)",
        "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s",
    ),
    "worker_lost_wait": Ignored("Conveyor's supervisor notices a lost child by itself"),
    "worker_pool": _no(_POOL, "prefork", "processes"),
    "worker_pool_putlocks": Ignored("an internal of Celery's prefork pool"),
    "worker_proc_alive_timeout": Ignored("an internal of Celery's prefork pool"),
    "worker_redirect_stdouts": _no(
        "Conveyor does not redirect print() into the log: it goes to the worker's stdout",
        False,
    ),
    "worker_redirect_stdouts_level": Ignored("only used with worker_redirect_stdouts=True"),
    "worker_soft_shutdown_timeout": _no(
        "Conveyor's warm shutdown waits worker_shutdown_timeout", 0, 0.0
    ),
    "worker_state_db": _no(
        "Conveyor keeps revocations in the broker (revoke_expires), not in a file"
    ),
    "worker_task_log_format": _no(
        "Conveyor's task log lines are fixed",
        "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s",
    ),
    "worker_timer": _no(_ETA_IN_BROKER),
    "worker_timer_precision": Ignored(_ETA_IN_BROKER),
}

#: The settings of Celery's result backends that Conveyor does not have, by prefix.
_BACKEND_SETTINGS: Final = {
    "arangodb": "backend_settings",
    "azureblockblob": (
        "base_path connection_timeout container_name read_timeout retry_increment_base "
        "retry_initial_backoff_sec retry_max_attempts"
    ),
    "cache": "backend backend_options",
    "cassandra": (
        "auth_kwargs auth_provider bundle_path entry_ttl keyspace options port read_consistency "
        "servers table write_consistency"
    ),
    "cosmosdbsql": (
        "collection_name consistency_level database_name max_retry_attempts max_retry_wait_time"
    ),
    "couchbase": "backend_settings",
    "database": (
        "create_tables_at_setup engine_callback engine_options short_lived_sessions table_names "
        "table_schemas url"
    ),
    "elasticsearch": "max_retries retry_on_timeout save_meta_as_text timeout",
    "gcs": "base_path bucket project ttl",
    "mongodb": "backend_settings",
    "s3": "access_key_id base_path bucket endpoint_url region secret_access_key",
}

#: Every Celery 5 setting by its lowercase name, and its fate in Conveyor.
CELERY_SETTINGS: Final[Mapping[str, Fate]] = dict(
    sorted(
        {
            **_TABLE,
            **{
                f"{prefix}_{name}": _backend(_BACKENDS[prefix])
                for prefix, names in _BACKEND_SETTINGS.items()
                for name in names.split()
            },
        }.items()
    )
)

# Celery's old (before 4.0) names: its namespaces' old prefixes, and the exceptions to them.
_OLD_PREFIXES: Final = (
    ("task_", "CELERY_"),
    ("worker_", "CELERYD_"),
    ("beat_", "CELERYBEAT_"),
    ("result_", "CELERY_RESULT_"),
    ("event_", "CELERY_EVENT_"),
    ("redis_", "CELERY_REDIS_"),
    ("security_", "CELERY_SECURITY_"),
    ("elasticsearch_", "CELERY_ELASTICSEARCH_"),
    ("mongodb_", "CELERY_MONGODB_"),
    ("couchbase_", "CELERY_COUCHBASE_"),
    ("arangodb_", "CELERY_ARANGODB_"),
    ("cache_", "CELERY_CACHE_"),
)
_OLD_EXCEPTIONS: Final = {
    "accept_content": "CELERY_ACCEPT_CONTENT",
    "imports": "CELERY_IMPORTS",
    "include": "CELERY_INCLUDE",
    "timezone": "CELERY_TIMEZONE",
    "result_accept_content": "RESULT_ACCEPT_CONTENT",
    "result_cache_max": "CELERY_MAX_CACHED_RESULTS",
    "result_expires": "CELERY_TASK_RESULT_EXPIRES",
    "database_url": "CELERY_RESULT_DBURI",
    "database_engine_options": "CELERY_RESULT_ENGINE_OPTIONS",
    "database_short_lived_sessions": "CELERY_RESULT_DB_SHORT_LIVED_SESSIONS",
    "database_table_names": "CELERY_RESULT_DB_TABLENAMES",
    "task_compression": "CELERY_MESSAGE_COMPRESSION",
    "task_eager_propagates": "CELERY_EAGER_PROPAGATES_EXCEPTIONS",
    "task_protocol": "CELERY_TASK_PROTOCOL",
    "task_publish_retry": "CELERY_TASK_PUBLISH_RETRY",
    "task_publish_retry_policy": "CELERY_TASK_PUBLISH_RETRY_POLICY",
    "task_send_sent_event": "CELERY_SEND_TASK_SENT_EVENT",
    "task_serializer": "CELERY_TASK_SERIALIZER",
    "task_soft_time_limit": "CELERYD_TASK_SOFT_TIME_LIMIT",
    "task_time_limit": "CELERYD_TASK_TIME_LIMIT",
    "worker_direct": "CELERY_WORKER_DIRECT",
    "worker_disable_rate_limits": "CELERY_DISABLE_RATE_LIMITS",
    "worker_enable_remote_control": "CELERY_ENABLE_REMOTE_CONTROL",
    "worker_lost_wait": "CELERYD_WORKER_LOST_WAIT",
    "worker_redirect_stdouts": "CELERY_REDIRECT_STDOUTS",
    "worker_redirect_stdouts_level": "CELERY_REDIRECT_STDOUTS_LEVEL",
    "worker_send_task_events": "CELERY_SEND_EVENTS",
}


def _old_name(name: str) -> str:
    if name in _OLD_EXCEPTIONS:
        return _OLD_EXCEPTIONS[name]
    for new, old in _OLD_PREFIXES:
        if name.startswith(new):
            return old + name.removeprefix(new).upper()
    return name.upper()  # broker_url -> BROKER_URL, s3_bucket -> S3_BUCKET, ...


#: Celery's old uppercase names (still read by Celery 5) -> the lowercase name.
OLD_NAMES: Final[Mapping[str, str]] = {
    **{_old_name(name): name for name in CELERY_SETTINGS},
    "CELERY_ENABLE_UTC": "enable_utc",  # in Celery's table of old names, beside ENABLE_UTC
}

#: Uppercase prefixes only Celery uses: such a name that Celery does not have is an error.
CELERY_PREFIXES: Final = ("CELERY_", "CELERYD_", "CELERYBEAT_")

#: Keywords of ``Celery(...)`` that ``Conveyor(...)`` does not take as parameters of its own:
#: refused with the reason, except the values in ``allowed`` (accepted and ignored).
CONSTRUCTOR_KEYWORDS: Final[Mapping[str, Refused]] = {
    "loader": Refused("Conveyor has no loaders: use app.config_from_object(...)"),
    "amqp": Refused("Conveyor has no AMQP class to replace"),
    "events": Refused(_NO_EVENTS),
    "log": Refused("Conveyor has no Logging class to replace: configure logging"),
    "control": Refused("Conveyor has no Control class to replace"),
    "tasks": Refused("Conveyor keeps its own registry (app.tasks): register with @app.task"),
    "fixups": Refused("Django support is conveyor.contrib.django (docs/django.md)", ((),)),
    "task_cls": Refused("pass base=YourTask to @app.task"),
    "autofinalize": Refused("Conveyor finalizes the app when it is first used", (True,)),
    "strict_typing": Refused(
        "Conveyor does not check arguments against a task's signature when sending", (True, False)
    ),
}

_LEASES = "Kombu's restore of unacknowledged messages; Conveyor's leases replace it"
_CONNECT_RETRIES = "Conveyor's Redis client retries connection errors: set 'retries' (default 3)"

#: Celery's (Kombu's) keys of broker_transport_options that Conveyor's brokers do not read.
#: Conveyor's own keys are key_prefix; poll_interval, busy_timeout, lock_timeout (SQLite); and
#: for Redis socket_timeout, socket_connect_timeout, health_check_interval, max_connections,
#: retries, client_name, ssl_*, wait_for_replicas and (Sentinel) master_name, sentinel_kwargs.
TRANSPORT_OPTIONS: Final[Mapping[str, Refused | Ignored]] = {
    "visibility_timeout": Refused(
        "Conveyor's lease is broker_lease_timeout, renewed while the task runs (long tasks "
        "need no long timeout)"
    ),
    "global_keyprefix": Refused("use key_prefix"),
    "priority_steps": Refused("Conveyor serves priorities 0-9, 9 first, on every broker"),
    "sep": Refused("Conveyor serves priorities 0-9, 9 first, on every broker"),
    "queue_order_strategy": Refused("Conveyor has no queue order strategy"),
    "max_retries": Refused(_CONNECT_RETRIES),
    "interval_start": Refused(_CONNECT_RETRIES),
    "interval_step": Refused(_CONNECT_RETRIES),
    "interval_max": Refused(_CONNECT_RETRIES),
    "retry_on_timeout": Refused(
        "Conveyor never repeats a Redis command after a timeout: it may have run", (False,)
    ),
    "polling_interval": Ignored(
        "Conveyor's Redis broker blocks instead of polling (SQLite: poll_interval)"
    ),
    "fanout_prefix": Ignored("Conveyor has no broadcast queues"),
    "fanout_patterns": Ignored("Conveyor has no broadcast queues"),
    "unacked_mutex_expire": Ignored(_LEASES),
    "unacked_restore_limit": Ignored(_LEASES),
    "ack_emulation": Ignored(_LEASES),
    "socket_keepalive": Ignored("Conveyor's Redis clients always use TCP keepalive"),
    "confirm_publish": Ignored(_NO_AMQP),
}
