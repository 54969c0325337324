"""Due-time wake-ups: a sorted set of members scored by due time (the pump that drains it: ``wakeup_pump``).

Durable timers and activity retries are rows in the journal; this module only
makes them fire on time. A member (``"run:<uuid>"``, ``"activity:<uuid>:<attempt>"``;
the format is the caller's business) is scheduled with a due time in epoch
seconds, and a ``WakeupPump`` thread pops each member once it is due and
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
import threading
from collections.abc import Iterable
from typing import Protocol

import redis

from continuum_celery.errors import InvalidArgument

#: Default longest sleep of the pump between two looks at the store, in seconds.
DEFAULT_POLL_INTERVAL = 0.2
#: Default number of members popped in one round trip.
DEFAULT_BATCH = 100
#: Floor of the pump's sleep, so a member due "just now" never turns the loop into a spin.
MIN_SLEEP = 0.001
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


def check_limit(limit: int) -> None:
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
        check_limit(limit)
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
        if block >= MIN_SLEEP:
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
        check_limit(limit)
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
