"""Settings, captured once in a frozen object.

Precedence, highest first: keyword arguments to ``Continuum(...)``, the Celery
app's configuration (``app.conf.continuum_*``), environment variables, the
defaults below.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigurationError
from .serialization import DEFAULT_MAX_PAYLOAD_BYTES

DEFAULT_DATABASE_URL = "sqlite:///continuum.sqlite3"
#: Seconds a replay lease lasts before another worker may take the run over; renewed while held.
DEFAULT_LEASE_TTL = 30.0
#: Seconds between beat sweeps.
DEFAULT_SWEEP_INTERVAL = 5.0
#: Seconds between the sweeps every worker runs itself, so no run waits on beat to recover (jittered).
DEFAULT_WORKER_SWEEP_INTERVAL = 5.0
#: Runs (or activity tasks) one sweep re-dispatches at most, per kind.
DEFAULT_SWEEP_BATCH = 500
#: A runnable run or scheduled activity with no claim after this many seconds is dispatched again.
DEFAULT_REDISPATCH_AFTER = 15.0
#: Events between two snapshots of a run's replay log.
DEFAULT_SNAPSHOT_EVERY = 200
#: Default start-to-close timeout of one activity attempt, in seconds.
DEFAULT_ACTIVITY_TIMEOUT = 300.0
#: Live workflow executions a worker process keeps in memory between steps.
DEFAULT_CACHE_SIZE = 256
#: Celery queue of internal tasks; None means the app's task_default_queue, so existing workers consume it.
DEFAULT_QUEUE: str | None = None
#: Seconds between two refreshes of a worker's rows in ``continuum_workflow_versions``.
DEFAULT_VERSION_HEARTBEAT = 15.0
#: A version not refreshed by any worker for this many seconds counts as gone (its worker died).
DEFAULT_VERSION_TTL = 60.0
#: Seconds a Redis command (wake-ups, notifications) may take before it counts as failed.
DEFAULT_REDIS_TIMEOUT = 1.0
#: Seconds Redis is skipped after a command failed (timers and dispatches fall back to the sweep).
DEFAULT_REDIS_COOLDOWN = 5.0
#: Seconds publishing one Celery message may take before the sweep is left to send it.
DEFAULT_PUBLISH_TIMEOUT = 1.0
#: Address the Prometheus exporter binds: loopback keeps metrics private unless asked otherwise.
DEFAULT_METRICS_ADDR = "127.0.0.1"

_ENV = {
    "database_url": "CONTINUUM_DATABASE_URL",
    "redis_url": "CONTINUUM_REDIS_URL",
    "lease_ttl": "CONTINUUM_LEASE_TTL",
    "sweep_interval": "CONTINUUM_SWEEP_INTERVAL",
    "worker_sweep_interval": "CONTINUUM_WORKER_SWEEP_INTERVAL",
    "redispatch_after": "CONTINUUM_REDISPATCH_AFTER",
    "snapshot_every": "CONTINUUM_SNAPSHOT_EVERY",
    "queue": "CONTINUUM_QUEUE",
    "key_prefix": "CONTINUUM_KEY_PREFIX",
    "version_heartbeat": "CONTINUUM_VERSION_HEARTBEAT",
    "version_ttl": "CONTINUUM_VERSION_TTL",
    "metrics_port": "CONTINUUM_METRICS_PORT",
    "metrics_addr": "CONTINUUM_METRICS_ADDR",
    "inline_activities": "CONTINUUM_INLINE_ACTIVITIES",
    "redis_timeout": "CONTINUUM_REDIS_TIMEOUT",
    "redis_cooldown": "CONTINUUM_REDIS_COOLDOWN",
    "publish_timeout": "CONTINUUM_PUBLISH_TIMEOUT",
}

# Field annotations (strings, under ``from __future__ import annotations``) read from text as numbers.
_NUMERIC: dict[str, type] = {"float": float, "int": int, "int | None": int, "float | None": float}


@dataclass(frozen=True)
class Settings:
    """Everything the engine reads from configuration.

    Attributes:
        name: instance name; prefixes Redis keys so several engines can share one Redis.
        database_url: SQLAlchemy URL of the journal (PostgreSQL in production, SQLite embedded).
        redis_url: Redis for timer wake-ups and notifications; None disables them (sweep only).
        queue: Celery queue of replay, start and sweep tasks, and the default activity queue.
        lease_ttl: seconds a run lease lasts; renewed at a third of it while a step runs.
        sweep_interval: seconds between beat sweeps.
        worker_sweep_interval: seconds between the sweeps each worker runs in its main process
            (jittered; ``0`` turns them off and leaves recovery to beat).
        sweep_batch: most rows re-dispatched per sweep, per kind.
        redispatch_after: seconds before a runnable but unclaimed row is dispatched again.
        snapshot_every: events between replay-log snapshots.
        activity_timeout: default start-to-close timeout of an activity attempt.
        cache_size: live executions kept per worker process.
        inline_activities: let a replay step run a lone awaited activity routed to the replay
            queue itself, instead of a Celery round trip (env ``0``/``false`` turns it off).
        max_payload_bytes: largest JSON payload accepted.
        key_prefix: Redis key prefix (default ``continuum:<name>:``).
        workflow_modules: modules imported at worker boot to load workflow definitions.
        version_routing: send each run's replays to its version's queue (``<queue>.v.<hash>``),
            which only workers that have that version consume.
        version_heartbeat: seconds between refreshes of a worker's served versions.
        version_ttl: seconds after which versions no worker refreshed count as gone; the sweep
            then parks their due runs as ``unknown_version``.
        metrics_port: serve Prometheus metrics from each worker process: a prefork pool child
            on ``metrics_port + its index``, a solo or threads worker on ``metrics_port``
            (``0``: any free port). None (the default) exports nothing.
        metrics_addr: address the metrics server binds (loopback by default; ``0.0.0.0`` for a
            Prometheus server on another host).
        redis_timeout: seconds a Redis command may take (connect and read) before it counts as failed.
        redis_cooldown: seconds Redis is skipped after a failed command; meanwhile timers and
            dispatches fall back to the sweep, so a hung Redis costs a step at most one timeout.
        publish_timeout: seconds publishing one Celery message may take (connect, write, one
            reconnect); past it the caller goes on and the sweep sends the message later.
    """

    name: str = "default"
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    queue: str | None = DEFAULT_QUEUE
    lease_ttl: float = DEFAULT_LEASE_TTL
    sweep_interval: float = DEFAULT_SWEEP_INTERVAL
    worker_sweep_interval: float = DEFAULT_WORKER_SWEEP_INTERVAL
    sweep_batch: int = DEFAULT_SWEEP_BATCH
    redispatch_after: float = DEFAULT_REDISPATCH_AFTER
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    activity_timeout: float = DEFAULT_ACTIVITY_TIMEOUT
    cache_size: int = DEFAULT_CACHE_SIZE
    inline_activities: bool = True
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    key_prefix: str = ""
    workflow_modules: tuple[str, ...] = ()
    version_routing: bool = True
    version_heartbeat: float = DEFAULT_VERSION_HEARTBEAT
    version_ttl: float = DEFAULT_VERSION_TTL
    metrics_port: int | None = None
    metrics_addr: str = DEFAULT_METRICS_ADDR
    redis_timeout: float = DEFAULT_REDIS_TIMEOUT
    redis_cooldown: float = DEFAULT_REDIS_COOLDOWN
    publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT

    def __post_init__(self) -> None:
        if not self.key_prefix:
            object.__setattr__(self, "key_prefix", f"continuum:{self.name}:")
        if self.lease_ttl <= 1:
            raise ConfigurationError(
                f"lease_ttl={self.lease_ttl} is too short: use at least 2 seconds (default {DEFAULT_LEASE_TTL})."
            )
        if not 0 < self.version_heartbeat < self.version_ttl:
            raise ConfigurationError(
                f"version_heartbeat={self.version_heartbeat} and version_ttl={self.version_ttl}: use a positive "
                f"heartbeat shorter than the ttl (defaults {DEFAULT_VERSION_HEARTBEAT} and {DEFAULT_VERSION_TTL})."
            )
        for knob in ("redis_timeout", "redis_cooldown", "publish_timeout"):
            if not getattr(self, knob) > 0:
                raise ConfigurationError(f"{knob}={getattr(self, knob)}: use a positive number of seconds.")
        if self.worker_sweep_interval < 0:
            raise ConfigurationError(
                f"worker_sweep_interval={self.worker_sweep_interval}: use a positive number of seconds, or 0 for none."
            )
        if self.snapshot_every < 10:
            raise ConfigurationError(f"snapshot_every={self.snapshot_every}: use 10 or more.")

    @classmethod
    def resolve(cls, conf: Mapping[str, Any] | None = None, **overrides: Any) -> Settings:
        """Build settings from overrides, then ``conf['continuum_<field>']``, then the environment."""
        conf = conf or {}
        values: dict[str, Any] = {}
        for f in fields(cls):
            if overrides.get(f.name) is not None:
                values[f.name] = overrides[f.name]
            elif conf.get(f"continuum_{f.name}") is not None:
                values[f.name] = conf[f"continuum_{f.name}"]
            elif f.name in _ENV and os.environ.get(_ENV[f.name]):
                values[f.name] = os.environ[_ENV[f.name]]
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigurationError(f"unknown continuum settings: {sorted(unknown)}")
        for f in fields(cls):
            if f.name in values and f.type in _NUMERIC and isinstance(values[f.name], str):
                try:
                    values[f.name] = _NUMERIC[f.type](values[f.name])
                except ValueError:
                    raise ConfigurationError(
                        f"continuum setting {f.name}={values[f.name]!r} is not a number"
                        + (f" (check {_ENV[f.name]})" if f.name in _ENV else "")
                    ) from None
        if isinstance(values.get("inline_activities"), str):
            values["inline_activities"] = values["inline_activities"].strip().lower() not in ("0", "false", "no", "off")
        if isinstance(values.get("workflow_modules"), (list, str)):
            mods = values["workflow_modules"]
            values["workflow_modules"] = tuple(mods.split(",") if isinstance(mods, str) else mods)
        return cls(**values)
