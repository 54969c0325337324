"""The ready-made Celery app behind ``celery -A continuum_celery worker -B``.

Configured by ``celeryconfig.py`` when it is importable (the project's own),
else by environment variables: ``CELERY_BROKER_URL``, ``CONTINUUM_DATABASE_URL``,
``CONTINUUM_REDIS_URL``.
"""

from __future__ import annotations

import importlib.util
import os
import threading

from celery import Celery

_lock = threading.Lock()
_app: Celery | None = None


def create_app(config_module: str | None = None) -> Celery:
    """Build a Celery app with continuum installed."""
    from .installer import Continuum

    app = Celery("continuum_celery")
    module = config_module or os.environ.get("CONTINUUM_CELERY_CONFIG", "celeryconfig")
    if importlib.util.find_spec(module) is not None:
        app.config_from_object(module)
    else:
        app.conf.broker_url = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
        app.conf.task_acks_late = True
        app.conf.worker_prefetch_multiplier = 1
    Continuum(app)
    return app


def get_default_app() -> Celery:
    """The process-wide default app, built on first use."""
    global _app
    with _lock:
        if _app is None:
            _app = create_app()
        return _app
