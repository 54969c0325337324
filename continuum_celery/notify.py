"""Completion notifications and dispatch de-duplication.

A client waiting for a run's result (``RunHandle.result(timeout=...)``) should
wake the moment the run finishes, without polling PostgreSQL in a tight loop.
The worker that finishes a run publishes a notification; the waiter subscribes,
and on each notification re-reads the authoritative state through a ``check()``
callback. Notifications are hints: one may be lost (Redis down, published before
anyone subscribed), so the waiter also calls ``check()`` at a slow fallback
interval and the answer always comes from ``check()``, never from the message.

:meth:`Notifier.claim_dispatch` collapses duplicate dispatches: when several
events each want to send "replay run X" within a short window, only the first
caller gets ``True`` and sends the Celery message.

Two notifiers share the :class:`Notifier` contract:

* :class:`RedisNotifier`: pub/sub channels and ``SET NX PX`` keys.
* :class:`LocalNotifier`: an in-process twin for the embedded default with no Redis.

Redis is not authoritative. ``publish_finished`` and ``claim_dispatch`` raise
redis errors as they come and callers treat them as best-effort (a caller that
cannot claim may simply dispatch: duplicates are dropped by the fencing claim
of the Celery task). ``wait_finished`` never raises for Redis: it degrades to
calling ``check()`` at the fallback interval.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis
from redis.client import PubSub

from continuum_celery.errors import InvalidArgument

logger = logging.getLogger(__name__)

#: Default interval, in seconds, of the authoritative ``check()`` while waiting.
DEFAULT_FALLBACK_INTERVAL = 2.0


class Notifier(Protocol):
    """Run-finished notifications and short-lived dispatch claims."""

    def publish_finished(self, run_id: str, state: str) -> None:
        """Tell current waiters that ``run_id`` reached the terminal ``state``."""

    def wait_finished(self, run_id: str, timeout: float | None, check: Callable[[], bool]) -> bool:
        """Block until ``run_id`` is finished by ``check()``'s account, or ``timeout`` elapses.

        ``check()`` is the authoritative test (it reads the journal). It is called
        once right after subscribing, so a run that finished before the wait
        began is seen at once; then after each notification for ``run_id``; and
        every fallback interval in case a notification was lost. ``timeout=None``
        waits for ever.

        Returns:
            ``check()``'s last answer: ``True`` if the run is finished.
        """

    def claim_dispatch(self, key: str, ttl: float) -> bool:
        """Return ``True`` if no one claimed ``key`` in the last ``ttl`` seconds, claiming it."""

    def watch_finished(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(run_id)`` for every run that finishes from now on (best effort); returns a stop function.

        A worker process uses it to drop the executions it keeps for runs another process ended.
        """


def _check_ttl(ttl: float) -> None:
    if not ttl > 0:
        raise InvalidArgument(f"claim_dispatch ttl must be positive, got {ttl!r}", ttl=ttl)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _notify(callback: Callable[[str], None], run_id: str) -> None:
    try:
        callback(run_id)
    except Exception:
        logger.warning("finished-run callback failed for run %s", run_id, exc_info=True)


def _remaining(deadline: float | None, until: float) -> float:
    """Seconds from now to the earlier of ``deadline`` and ``until``, never negative."""
    end = until if deadline is None else min(deadline, until)
    return max(0.0, end - time.monotonic())


class RedisNotifier:
    """:class:`Notifier` on Redis pub/sub and ``SET NX PX`` keys.

    Each waiter holds one pub/sub connection from the client's pool for the
    length of its wait.

    Args:
        client: a ``redis.Redis`` client, with or without ``decode_responses``.
        prefix: prepended to channel names (``{prefix}finished:{run_id}``) and
            claim keys (``{prefix}dispatch:{key}``).
        fallback_interval: seconds between authoritative ``check()`` calls while waiting.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        fallback_interval: float = DEFAULT_FALLBACK_INTERVAL,
    ) -> None:
        if not fallback_interval > 0:
            raise InvalidArgument("fallback_interval must be positive", fallback_interval=fallback_interval)
        self._client = client
        self._prefix = prefix
        self._fallback_interval = fallback_interval

    def channel(self, run_id: str) -> str:
        """The pub/sub channel that carries ``run_id``'s finished notification."""
        return f"{self._prefix}finished:{run_id}"

    def dispatch_key(self, key: str) -> str:
        """The Redis key that holds the claim on ``key``."""
        return f"{self._prefix}dispatch:{key}"

    def publish_finished(self, run_id: str, state: str) -> None:
        """``PUBLISH`` the terminal ``state`` on the run's channel; raises redis errors."""
        self._client.publish(self.channel(run_id), state)

    def claim_dispatch(self, key: str, ttl: float) -> bool:
        """``SET NX PX`` the claim key; ``True`` if this caller set it. Raises redis errors.

        Raises:
            InvalidArgument: ``ttl`` is not positive.
        """
        _check_ttl(ttl)
        millis = max(1, round(ttl * 1000))
        return bool(self._client.set(self.dispatch_key(key), "1", nx=True, px=millis))

    def watch_finished(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Follow every run's channel (``PSUBSCRIBE``) in a daemon thread that survives Redis outages."""
        stop = threading.Event()
        thread = threading.Thread(
            target=self._watch, args=(callback, stop), name="continuum-finished-watch", daemon=True
        )
        thread.start()
        return stop.set

    def _watch(self, callback: Callable[[str], None], stop: threading.Event) -> None:
        prefix = self.channel("")
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
        while not stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(pattern)
                while not stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "pmessage":
                        _notify(callback, _text(message["channel"])[len(prefix) :])
            except redis.RedisError:
                logger.debug("finished-run watch lost Redis; retrying", exc_info=True)
                stop.wait(1.0)
            finally:
                self._close(pubsub)

    def wait_finished(self, run_id: str, timeout: float | None, check: Callable[[], bool]) -> bool:
        """Wait on the run's channel, confirming every wake-up with ``check()``.

        If Redis fails at any point the wait carries on without it, calling
        ``check()`` every fallback interval until ``timeout``.
        """
        if timeout is not None and timeout <= 0:
            return check()
        deadline = _deadline(timeout)
        pubsub = self._subscribe(self.channel(run_id), deadline)
        try:
            if check():
                return True
            next_check = time.monotonic() + self._fallback_interval
            just_checked = True
            while deadline is None or time.monotonic() < deadline:
                wait = _remaining(deadline, next_check)
                if pubsub is not None:
                    try:
                        notified = self._next_message(pubsub, wait)
                    except redis.RedisError:
                        logger.info("lost the notification channel of run %s; polling", run_id)
                        self._close(pubsub)
                        pubsub = None
                        continue
                else:
                    notified = False
                    time.sleep(wait)
                just_checked = notified or time.monotonic() >= next_check
                if just_checked:
                    if check():
                        return True
                    next_check = time.monotonic() + self._fallback_interval
            # The wait may end between two checks; the answer is always check()'s.
            return False if just_checked else check()
        finally:
            self._close(pubsub)

    def _subscribe(self, channel: str, deadline: float | None) -> PubSub | None:
        """Subscribe and wait for the server's confirmation; ``None`` if Redis fails.

        Waiting for the confirmation matters: only once the server has
        registered the subscription is a publish guaranteed to reach us, so
        the first ``check()`` should come after it. The wait is capped at one
        fallback interval; past that the first fallback ``check()`` covers
        the gap.
        """
        pubsub: PubSub = self._client.pubsub(ignore_subscribe_messages=False)
        try:
            pubsub.subscribe(channel)
            until = time.monotonic() + self._fallback_interval
            while (wait := _remaining(deadline, until)) > 0:
                message = pubsub.get_message(timeout=wait)
                if message is not None and message["type"] == "subscribe":
                    break
            return pubsub
        except redis.RedisError:
            logger.info("notifications unavailable; waiting by polling", exc_info=True)
        self._close(pubsub)
        return None

    @staticmethod
    def _next_message(pubsub: PubSub, timeout: float) -> bool:
        """Read one message within ``timeout``; ``True`` if it was a publish on our channel."""
        message = pubsub.get_message(timeout=timeout)
        return message is not None and message["type"] == "message"

    @staticmethod
    def _close(pubsub: PubSub | None) -> None:
        if pubsub is None:
            return
        with contextlib.suppress(redis.RedisError):
            pubsub.close()


class LocalNotifier:
    """In-process :class:`Notifier` for the embedded default with no Redis.

    Like pub/sub, a notification reaches only the waiters present when it is
    published; ``check()`` covers the rest.

    Args:
        fallback_interval: seconds between authoritative ``check()`` calls while waiting.
        clock: monotonic clock for claim expiry.
    """

    def __init__(
        self,
        *,
        fallback_interval: float = DEFAULT_FALLBACK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not fallback_interval > 0:
            raise InvalidArgument("fallback_interval must be positive", fallback_interval=fallback_interval)
        self._fallback_interval = fallback_interval
        self._clock = clock
        self._cond = threading.Condition()
        # Notifications per run, kept only while someone waits on that run.
        self._published: dict[str, int] = {}
        self._waiters: dict[str, int] = {}
        self._claims: dict[str, float] = {}
        self._claims_lock = threading.Lock()
        self._sweep_at = 1024
        self._watchers: list[Callable[[str], None]] = []

    def publish_finished(self, run_id: str, state: str) -> None:
        """Wake the waiters and watchers of ``run_id``."""
        with self._cond:
            if run_id in self._waiters:
                self._published[run_id] += 1
                self._cond.notify_all()
            watchers = list(self._watchers)
        for callback in watchers:
            _notify(callback, run_id)

    def watch_finished(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback`` from each later ``publish_finished``; returns a stop function."""
        with self._cond:
            self._watchers.append(callback)

        def stop() -> None:
            with self._cond, contextlib.suppress(ValueError):
                self._watchers.remove(callback)

        return stop

    def wait_finished(self, run_id: str, timeout: float | None, check: Callable[[], bool]) -> bool:
        """Wait for a publish on ``run_id``, confirming every wake-up with ``check()``."""
        if timeout is not None and timeout <= 0:
            return check()
        deadline = _deadline(timeout)
        with self._cond:
            self._waiters[run_id] = self._waiters.get(run_id, 0) + 1
            seen = self._published.setdefault(run_id, 0)
        try:
            if check():
                return True
            next_check = time.monotonic() + self._fallback_interval
            just_checked = True
            while deadline is None or time.monotonic() < deadline:
                latest = self._wait_publish(run_id, seen, _remaining(deadline, next_check))
                notified, seen = latest != seen, latest
                just_checked = notified or time.monotonic() >= next_check
                if just_checked:
                    if check():
                        return True
                    next_check = time.monotonic() + self._fallback_interval
            return False if just_checked else check()
        finally:
            with self._cond:
                self._waiters[run_id] -= 1
                if not self._waiters[run_id]:
                    del self._waiters[run_id]
                    del self._published[run_id]

    def _wait_publish(self, run_id: str, seen: int, timeout: float) -> int:
        """Wait up to ``timeout`` for a publish past ``seen``; return the run's publish count."""
        with self._cond:
            self._cond.wait_for(lambda: self._published[run_id] != seen, timeout)
            return self._published[run_id]

    def claim_dispatch(self, key: str, ttl: float) -> bool:
        """Claim ``key`` for ``ttl`` seconds; ``True`` if it was free.

        Raises:
            InvalidArgument: ``ttl`` is not positive.
        """
        _check_ttl(ttl)
        now = self._clock()
        with self._claims_lock:
            expires = self._claims.get(key)
            if expires is not None and expires > now:
                return False
            self._claims[key] = now + ttl
            if len(self._claims) >= self._sweep_at:
                self._claims = {k: t for k, t in self._claims.items() if t > now}
                self._sweep_at = max(1024, 2 * len(self._claims))
            return True
