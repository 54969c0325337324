"""Due-time wake-ups: a sorted set of members scored by due time, and the pump that drains it.

Durable timers and activity retries are rows in the journal; this module only
makes them fire on time. A member (``"run:<uuid>"``, ``"activity:<uuid>:<attempt>"``;
the format is the caller's business) is scheduled with a due time in epoch
seconds, and a :class:`WakeupPump` thread pops each member once it is due and
hands it to a dispatch callback. Celery ETA/countdown messages are never used:
the Redis broker redelivers them after its visibility timeout.

Nothing here is authoritative. Losing the sorted set (a Redis flush, a popped
member whose process died) loses no run: the beat sweep re-derives every due
timer and retry from PostgreSQL. So :class:`RedisWakeups` raises redis errors
as they come and callers treat every call as best-effort; the pump itself
survives an outage and keeps going.

Two stores share the :class:`Wakeups` contract:

* :class:`RedisWakeups`: one sorted set, popped atomically with a Lua script so
  several pumps (one per worker process) never both get one member.
* :class:`LocalWakeups`: an in-process heap for the embedded default with no Redis.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import redis

from continuum_celery.errors import InvalidArgument

logger = logging.getLogger(__name__)

#: Default longest sleep of the pump between two looks at the store, in seconds.
DEFAULT_POLL_INTERVAL = 0.2
#: Default number of members popped in one round trip.
DEFAULT_BATCH = 100
#: Delay before a member whose dispatch raised is offered again, in seconds.
DEFAULT_RETRY_DELAY = 1.0
#: Longest back-off of the pump while its store keeps failing, in seconds.
MAX_BACKOFF = 5.0
#: Floor of the pump's sleep, so a member due "just now" never turns the loop into a spin.
_MIN_SLEEP = 0.001
#: Members per ZADD / ZREM command, to keep single commands small.
_CHUNK = 1000

# ZRANGEBYSCORE and ZREM in one EVAL: Redis runs a script atomically, so a
# member is returned to exactly one caller. ZREM goes in chunks because
# unpack() of a very large table overflows the Lua C stack.
_POP_DUE_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for i = 1, #due, 1000 do
    redis.call('ZREM', KEYS[1], unpack(due, i, math.min(i + 999, #due)))
end
return due
"""


class Wakeups(Protocol):
    """A set of members, each with one due time (epoch seconds)."""

    def schedule(self, member: str, due: float) -> None:
        """Add ``member`` due at ``due``; if it is already present, keep the earlier due time."""

    def schedule_many(self, items: Iterable[tuple[str, float]]) -> None:
        """:meth:`schedule` each ``(member, due)`` pair, in as few round trips as possible."""

    def pop_due(self, now: float, limit: int = DEFAULT_BATCH) -> list[str]:
        """Atomically remove and return up to ``limit`` members due at or before ``now``.

        Members come earliest due first. Each member is returned to one caller only.
        """

    def remove(self, member: str) -> None:
        """Forget ``member`` (a cancelled timer); a no-op if it is absent."""

    def next_due(self) -> float | None:
        """The earliest due time in the set, or ``None`` if the set is empty."""

    def size(self) -> int:
        """How many members are scheduled."""

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, less if a member is scheduled meanwhile (by any process).

        The pump sleeps here until its next member is due, so a member scheduled sooner than
        that (a short timer) is not left waiting for the pump's next look.
        """


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise InvalidArgument(f"pop_due limit must be at least 1, got {limit!r}", limit=limit)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisWakeups:
    """:class:`Wakeups` on one Redis sorted set.

    Every method raises redis errors (``redis.ConnectionError`` and friends) as
    they come; callers treat them as best-effort because the beat sweep
    rebuilds the set from PostgreSQL.

    Args:
        client: a ``redis.Redis`` client, with or without ``decode_responses``.
        key: the sorted set's key.
    """

    def __init__(self, client: redis.Redis, key: str, *, longest_block: float = DEFAULT_POLL_INTERVAL) -> None:
        self._client = client
        self._key = key
        self._pop_script = client.register_script(_POP_DUE_LUA)
        # One element at most: a schedule pushes, a pump waiting on it pops (BLPOP) and looks again.
        self._news = f"{key}:news"
        # A blocking read must end well within the client's read timeout, or it would count as a hung Redis.
        self._longest_block = longest_block

    @property
    def key(self) -> str:
        """The sorted set's key."""
        return self._key

    def schedule(self, member: str, due: float) -> None:
        """Add ``member`` at ``due``, keeping an earlier due time already set (``ZADD LT``)."""
        # LT still adds missing members; it only refuses to move one later.
        self._added([{member: float(due)}])

    def _added(self, chunks: list[dict[str, float]]) -> None:
        """ZADD the chunks and tell a waiting pump, in one round trip."""
        pipe = self._client.pipeline(transaction=False)
        for chunk in chunks:
            pipe.zadd(self._key, chunk, lt=True)
        pipe.lpush(self._news, 1)
        pipe.ltrim(self._news, 0, 0)
        pipe.execute()

    def schedule_many(self, items: Iterable[tuple[str, float]]) -> None:
        """Schedule many members with ``ZADD LT``, the earliest due winning among duplicates."""
        earliest: dict[str, float] = {}
        for member, due in items:
            due = float(due)
            if member not in earliest or due < earliest[member]:
                earliest[member] = due
        pairs = list(earliest.items())
        if pairs:
            self._added([dict(pairs[start : start + _CHUNK]) for start in range(0, len(pairs), _CHUNK)])

    def pop_due(self, now: float, limit: int = DEFAULT_BATCH) -> list[str]:
        """Atomically remove and return up to ``limit`` members with due time <= ``now``.

        Raises:
            InvalidArgument: ``limit`` is below 1.
        """
        _check_limit(limit)
        popped = self._pop_script(keys=[self._key], args=[repr(float(now)), int(limit)])
        return [_text(member) for member in popped]

    def remove(self, member: str) -> None:
        """Forget ``member``; a no-op if it is absent."""
        self._client.zrem(self._key, member)

    def next_due(self) -> float | None:
        """The earliest due time, or ``None`` if the set is empty."""
        head = self._client.zrange(self._key, 0, 0, withscores=True)
        return float(head[0][1]) if head else None

    def size(self) -> int:
        """How many members are scheduled (``ZCARD``)."""
        return int(self._client.zcard(self._key))

    def wait(self, timeout: float) -> None:
        """``BLPOP`` on the news list, for ``timeout`` seconds at most (capped at ``longest_block``)."""
        block = min(timeout, self._longest_block)
        if block >= _MIN_SLEEP:
            self._client.blpop([self._news], timeout=block)


class LocalWakeups:
    """In-process, thread-safe :class:`Wakeups` for the embedded default with no Redis.

    A dict holds each member's current due time; a heap orders them. Moving a
    member earlier or removing it leaves a stale heap entry behind, skipped on
    pop and dropped when stale entries outnumber live ones.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._counter = itertools.count()  # FIFO among equal due times
        self._news = threading.Event()

    def schedule(self, member: str, due: float) -> None:
        """Add ``member`` at ``due``, keeping an earlier due time already set."""
        with self._lock:
            self._schedule(member, float(due))
        self._news.set()

    def schedule_many(self, items: Iterable[tuple[str, float]]) -> None:
        """Schedule each ``(member, due)`` pair under one lock."""
        with self._lock:
            for member, due in items:
                self._schedule(member, float(due))
        self._news.set()

    def pop_due(self, now: float, limit: int = DEFAULT_BATCH) -> list[str]:
        """Remove and return up to ``limit`` members with due time <= ``now``, earliest first.

        Raises:
            InvalidArgument: ``limit`` is below 1.
        """
        _check_limit(limit)
        popped: list[str] = []
        with self._lock:
            while self._heap and len(popped) < limit:
                due, _, member = self._heap[0]
                if self._due.get(member) != due:
                    heapq.heappop(self._heap)
                    continue
                if due > now:
                    break
                heapq.heappop(self._heap)
                del self._due[member]
                popped.append(member)
        return popped

    def remove(self, member: str) -> None:
        """Forget ``member``; a no-op if it is absent."""
        with self._lock:
            if self._due.pop(member, None) is not None:
                self._compact_if_stale()

    def next_due(self) -> float | None:
        """The earliest due time, or ``None`` if the set is empty."""
        with self._lock:
            while self._heap:
                due, _, member = self._heap[0]
                if self._due.get(member) == due:
                    return due
                heapq.heappop(self._heap)
            return None

    def size(self) -> int:
        """How many members are scheduled."""
        with self._lock:
            return len(self._due)

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, less if a member is scheduled meanwhile."""
        if self._news.wait(timeout):
            self._news.clear()

    def _schedule(self, member: str, due: float) -> None:
        current = self._due.get(member)
        if current is not None and current <= due:
            return
        self._due[member] = due
        heapq.heappush(self._heap, (due, next(self._counter), member))
        if current is not None:
            self._compact_if_stale()

    def _compact_if_stale(self) -> None:
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._due):
            self._heap = [entry for entry in self._heap if self._due.get(entry[2]) == entry[0]]
            heapq.heapify(self._heap)


class WakeupPump:
    """A daemon thread that pops due members and hands each to ``dispatch(member)``.

    The pump sleeps until the earliest due time or ``poll_interval``, whichever
    comes first, so a member fires well under a second late. A dispatch that
    raises is logged and its member scheduled again ``retry_delay`` seconds
    later. A failing store (Redis down, key flushed mid-call) is logged once per
    outage and retried with a growing back-off; the thread never dies of it.
    Anything the pump still misses, the beat sweep recovers from PostgreSQL.

    Args:
        wakeups: the store to drain.
        dispatch: called with each due member, on the pump's thread.
        poll_interval: longest sleep between two looks at the store, in seconds.
        batch: most members popped per round trip.
        clock: epoch-seconds clock, the same one the due times are written with.
        retry_delay: delay before a member whose dispatch raised is offered again.
    """

    def __init__(
        self,
        wakeups: Wakeups,
        dispatch: Callable[[str], None],
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        batch: int = DEFAULT_BATCH,
        clock: Callable[[], float] = time.time,
        retry_delay: float = DEFAULT_RETRY_DELAY,
    ) -> None:
        if poll_interval <= 0:
            raise InvalidArgument("poll_interval must be positive", poll_interval=poll_interval)
        _check_limit(batch)
        self._wakeups = wakeups
        self._dispatch = dispatch
        self._poll_interval = poll_interval
        self._batch = batch
        self._clock = clock
        self._retry_delay = retry_delay
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    @property
    def running(self) -> bool:
        """Whether the pump's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the daemon thread; a no-op if it is already running."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="continuum-wakeup-pump", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` seconds for it to finish.

        A dispatch in progress finishes first; members not yet popped stay in the store.
        """
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is threading.current_thread():
            return  # called from a dispatch callback: the loop ends after this batch
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("wake-up pump did not stop within %.1fs", timeout)
            else:
                self._thread = None

    def wake(self) -> None:
        """Cut the current sleep short, e.g. right after scheduling a member due now."""
        self._wake.set()

    def run_once(self) -> int:
        """Pop one batch of due members and dispatch them; return how many dispatched cleanly.

        Raises:
            Exception: whatever the store raises while popping (e.g. ``redis.ConnectionError``).
                Errors of ``dispatch`` are logged, not raised.
        """
        return self._drain()[1]

    def _reschedule(self, member: str) -> None:
        try:
            self._wakeups.schedule(member, self._clock() + self._retry_delay)
        except Exception:
            # The member is gone from the store now; the beat sweep re-derives it.
            logger.warning("could not re-schedule wake-up %r; the sweep will recover it", member)

    def _loop(self) -> None:
        backoff = self._poll_interval
        while not self._stop.is_set():
            # Cleared before looking, so a wake() during the look cuts the next sleep short.
            self._wake.clear()
            try:
                popped, _ = self._drain()
                # A full batch suggests more is due: go again without sleeping.
                delay = 0.0 if popped >= self._batch else self._sleep_hint()
            except Exception:
                self._note_failure()
                delay, backoff = backoff, min(backoff * 2, MAX_BACKOFF)
            else:
                self._note_recovery()
                backoff = self._poll_interval
            if delay > 0:
                self._sleep(delay)

    def _drain(self) -> tuple[int, int]:
        """Pop one batch and dispatch it; return (popped, dispatched cleanly)."""
        members = self._wakeups.pop_due(self._clock(), self._batch)
        dispatched = 0
        for member in members:
            try:
                self._dispatch(member)
            except Exception:
                logger.exception("wake-up dispatch of %r failed; retrying it shortly", member)
                self._reschedule(member)
            else:
                dispatched += 1
        return len(members), dispatched

    def _sleep(self, delay: float) -> None:
        """Wait for the next due member, a newly scheduled one or ``stop()``, at most ``delay`` seconds."""
        if self._failing:  # a store that keeps failing is not asked to block
            self._wake.wait(delay)
            return
        try:
            self._wakeups.wait(delay)
        except Exception:
            self._note_failure()
            self._wake.wait(delay)

    def _sleep_hint(self) -> float:
        next_due = self._wakeups.next_due()
        if next_due is None:
            return self._poll_interval
        return max(_MIN_SLEEP, min(self._poll_interval, next_due - self._clock()))

    def _note_failure(self) -> None:
        if not self._failing:
            self._failing = True
            logger.warning(
                "wake-up store unavailable; backing off (timers fall back to the sweep)",
                exc_info=True,
            )

    def _note_recovery(self) -> None:
        if self._failing:
            self._failing = False
            logger.info("wake-up store available again")
