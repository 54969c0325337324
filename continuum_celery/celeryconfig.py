"""The packaged Celery configuration of the bundled app (``celery -A continuum_celery worker -B``).

Used when no ``celeryconfig`` module of your own is importable (from the current directory or
``sys.path``). Every value can be overridden by the environment variable named beside it; to
change more, copy this file into your project as ``celeryconfig.py``.
"""

import os

broker_url = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
# Results of continuum's own tasks live in the journal; no result backend is needed.
result_backend = os.environ.get("CELERY_RESULT_BACKEND") or None
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_serializer = "json"
accept_content = ["json"]
# Redis redelivers unacked messages after this; claims make a redelivery harmless.
broker_transport_options = {"visibility_timeout": 3600}
broker_connection_retry_on_startup = True
worker_send_task_events = True
task_send_sent_event = True
#: The workflow modules a worker loads (comma-separated): by default the examples.
imports = tuple(
    m.strip()
    for m in os.environ.get(
        "CONTINUUM_WORKFLOW_MODULES",
        "continuum_celery.examples.orders,continuum_celery.examples.approvals,continuum_celery.examples.fanout",
    ).split(",")
    if m.strip()
)

continuum_database_url = os.environ.get("CONTINUUM_DATABASE_URL", "sqlite:///continuum.sqlite3")
continuum_redis_url = os.environ.get("CONTINUUM_REDIS_URL") or None
