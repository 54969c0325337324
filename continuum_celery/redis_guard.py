"""Redis as a hint that never stalls the engine: short timeouts and a circuit breaker on every command.

Redis holds wake-ups and notifications, nothing authoritative (the sweep re-derives
both from the journal). So a hung Redis must cost a step a short, bounded delay, not
a socket timeout per command: every command gets short connect and read timeouts and
at most one reconnect (none after a timeout), and after one fails the client skips Redis altogether for a
cool-down (raising ``redis.ConnectionError`` at once, which every caller already
treats as "fall back to the sweep"). The first command after the cool-down probes
the server again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors that mean the server is unreachable or too slow (not a refused command).
TRIPPING_ERRORS: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)


class CircuitBreaker:
    """Fails calls at once for ``cooldown`` seconds after one failed with a tripping error.

    Args:
        name: what is guarded, for messages.
        cooldown: seconds to skip the dependency after a failure.
        clock: monotonic clock (tests pass their own).
    """

    def __init__(self, name: str, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.cooldown = cooldown
        self._clock = clock
        self._open_until = 0.0
        self._failing = False
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        """True while calls are skipped."""
        return self._clock() < self._open_until

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn``, or raise ``redis.ConnectionError`` at once while the breaker is open."""
        left = self._open_until - self._clock()
        if left > 0:
            raise redis.ConnectionError(f"{self.name} skipped for another {left:.1f} s after a failure")
        try:
            value = fn(*args, **kwargs)
        except TRIPPING_ERRORS as exc:
            self._trip(exc)
            raise
        if self._failing:
            with self._lock:
                self._failing = False
            log.info("%s answers again", self.name)
        return value

    def _trip(self, exc: Exception) -> None:
        with self._lock:
            self._open_until = self._clock() + self.cooldown
            first, self._failing = not self._failing, True
        if first:
            log.warning(
                "%s failed (%s); skipping it for %.1f s at a time until it answers (the sweep covers what it held)",
                self.name,
                exc,
                self.cooldown,
            )


class GuardedRedis(redis.Redis):
    """A ``redis.Redis`` whose every command goes through a :class:`CircuitBreaker` (scripts included)."""

    breaker: CircuitBreaker

    def execute_command(self, *args: Any, **options: Any) -> Any:
        return self.breaker.call(super().execute_command, *args, **options)


def guarded_redis(url: str, *, timeout: float, cooldown: float) -> GuardedRedis:
    """A client of ``url`` with ``timeout``-second connect and read timeouts, one reconnect, and a breaker."""
    pool = redis.ConnectionPool.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        # One reconnect covers a connection the server dropped (a restart); a server that let a command
        # time out would let the retry time out too, so timeouts are not retried.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )
    client = GuardedRedis(connection_pool=pool)
    where = pool.connection_kwargs
    client.breaker = CircuitBreaker(f"Redis {where.get('host', '')}:{where.get('port', '')}", cooldown)
    return client
