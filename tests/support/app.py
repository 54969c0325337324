"""The Celery app that test worker and beat processes run (``celery -A tests.support.app``).

Everything comes from the environment the harness sets, so each test gets its
own database, broker key prefix and Redis key prefix.
"""

from __future__ import annotations

import os

from celery import Celery

from continuum_celery import Continuum

app = Celery(
    "continuum-tests",
    broker=os.environ["CELERY_BROKER_URL"],
    backend=os.environ.get("CELERY_RESULT_BACKEND") or None,
)
app.conf.update(
    result_backend_transport_options={"global_keyprefix": os.environ.get("CONTINUUM_TEST_RESULT_PREFIX", "")},
    broker_transport_options={
        "global_keyprefix": os.environ["CONTINUUM_TEST_BROKER_PREFIX"],
        "visibility_timeout": 3600,
    },
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    imports=tuple(m for m in os.environ.get("CONTINUUM_TEST_MODULES", "tests.support.flows").split(",") if m),
)
engine = Continuum(
    app,
    database_url=os.environ["CONTINUUM_DATABASE_URL"],
    redis_url=os.environ.get("CONTINUUM_REDIS_URL") or None,
    key_prefix=os.environ["CONTINUUM_KEY_PREFIX"],
    lease_ttl=float(os.environ.get("CONTINUUM_LEASE_TTL", "30")),
    sweep_interval=float(os.environ.get("CONTINUUM_SWEEP_INTERVAL", "1")),
    redispatch_after=float(os.environ.get("CONTINUUM_REDISPATCH_AFTER", "3")),
)
