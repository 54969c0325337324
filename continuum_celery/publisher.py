"""Publish internal task messages with a deadline, so a hung broker never holds a caller.

The journal write is the promise; the message only makes the run advance sooner,
and the sweep re-sends whatever was not sent. So a publish gets short timeouts on
a connection pool of its own (the app's pool keeps the user's settings untouched):
connecting, reading and writing (``socket_timeout`` for the Redis transport, the
publish ``timeout`` for AMQP), waiting for a free producer, and one reconnect at
most. Past that the publish raises, the caller moves on, and the sweep sends the
message later; a message that was written after all is dropped as a duplicate by
the task's fencing claim.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from kombu.pools import ProducerPool

if TYPE_CHECKING:
    from celery import Celery

#: Producers (and connections) kept per process.
POOL_LIMIT = 10


class Publisher:
    """Sends ``app.send_task`` messages over short-timeout connections, built lazily per process."""

    def __init__(self, app: Celery, timeout: float) -> None:
        self.app = app
        self.timeout = timeout
        self._pool: ProducerPool | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def send(self, name: str, args: list[Any], **options: Any) -> None:
        """Publish one message; raises the broker's error (or a timeout) past ``timeout`` seconds."""
        with self._producers().acquire(block=True, timeout=self.timeout) as producer:
            self.app.send_task(
                name,
                args=args,
                producer=producer,
                retry=True,
                retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0, "interval_max": 0},
                timeout=self.timeout,
                confirm_timeout=self.timeout,
                **options,
            )

    def _producers(self) -> ProducerPool:
        # A pool is per process: connections inherited through a fork belong to the parent.
        if self._pool is None or self._pid != os.getpid():
            with self._lock:
                if self._pool is None or self._pid != os.getpid():
                    self._pool, self._pid = self._build(), os.getpid()
        return self._pool

    def _build(self) -> ProducerPool:
        conf = self.app.conf
        connection = self.app.connection_for_write(
            connect_timeout=self.timeout,
            transport_options={
                **(conf.broker_transport_options or {}),
                "socket_timeout": self.timeout,
                "socket_connect_timeout": self.timeout,
            },
        )
        return ProducerPool(connection.Pool(POOL_LIMIT), limit=POOL_LIMIT, Producer=self.app.amqp.Producer)
