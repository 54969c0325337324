"""The ready-made Celery app behind ``celery -A continuum_celery worker -B``.

Its configuration is, first found: the module named by ``CONTINUUM_CELERY_CONFIG`` or Celery's
``CELERY_CONFIG_MODULE``; a ``celeryconfig`` module importable from the current directory or
``sys.path`` (looked up the way ``celery -A`` finds modules); else the packaged defaults,
:mod:`continuum_celery.celeryconfig`, which read ``CELERY_BROKER_URL``,
``CONTINUUM_DATABASE_URL``, ``CONTINUUM_REDIS_URL`` and ``CONTINUUM_WORKFLOW_MODULES`` (default:
the examples). A worker logs which configuration it loaded when it is ready.
"""

from __future__ import annotations

import logging
import os
import threading
from types import ModuleType
from typing import Any

from celery import Celery, signals
from celery.utils.imports import import_from_cwd

from .errors import ConfigurationError

log = logging.getLogger(__name__)

#: The module a project names its Celery configuration by convention.
PROJECT_CONFIG = "celeryconfig"
#: The configuration shipped with the package, used when the project has none.
PACKAGED_CONFIG = "continuum_celery.celeryconfig"

_lock = threading.Lock()
_app: Celery | None = None


def find_config(config_module: str | None = None) -> ModuleType:
    """Import the bundled app's configuration module (see the module's docstring for the order).

    Raises:
        ConfigurationError: a module named explicitly (argument or environment) cannot be imported.
    """
    named = config_module or os.environ.get("CONTINUUM_CELERY_CONFIG") or os.environ.get("CELERY_CONFIG_MODULE")
    if named:
        try:
            return _import(named)
        except ImportError as exc:
            raise ConfigurationError(
                f"cannot import the Celery configuration module {named!r} ({exc}); check "
                "CONTINUUM_CELERY_CONFIG / CELERY_CONFIG_MODULE and that the module is on sys.path "
                "or in the current directory."
            ) from exc
    try:
        return _import(PROJECT_CONFIG)
    except ModuleNotFoundError as exc:
        if exc.name != PROJECT_CONFIG:  # the project's celeryconfig exists but imports something missing
            raise
    return _import(PACKAGED_CONFIG)


def _import(name: str) -> ModuleType:
    """Import ``name`` as ``celery -A`` does, the current directory first."""
    module: ModuleType = import_from_cwd(name)  # Celery's helper is unannotated
    return module


def describe_config(module: ModuleType) -> str:
    """``name (path)`` of a configuration module, for the startup log."""
    where = getattr(module, "__file__", None) or "built in"
    packaged = " (the packaged defaults)" if module.__name__ == PACKAGED_CONFIG else ""
    return f"{module.__name__}{packaged} from {where}"


def create_app(config_module: str | None = None) -> Celery:
    """Build a Celery app configured as described above, with continuum installed."""
    from .installer import Continuum

    app = Celery("continuum_celery")
    config = find_config(config_module)
    app.config_from_object(config)
    Continuum(app)
    source = describe_config(config)

    def on_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            log.info("continuum: the bundled app's configuration is %s", source)

    signals.worker_ready.connect(on_ready, weak=False)
    return app


def get_default_app() -> Celery:
    """The process-wide default app, built on first use."""
    global _app
    with _lock:
        if _app is None:
            _app = create_app()
        return _app
