"""What the live workers say about themselves: who answers a ping, their process ids, the queues they consume.

One ``inspect ping`` per doctor run, then ``stats`` and ``active_queues`` of the
nodes that answered. With no reachable broker every answer is "unknown".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kombu.utils.url import maybe_sanitize_url

from .routing import version_queue

#: Seconds ``inspect ping`` waits for workers to answer.
PING_TIMEOUT = 1.0

ALIVE, DEAD, UNKNOWN = "alive", "dead", "unknown"


def broker_error(app: Any, timeout: float = 2.0) -> str | None:
    """Why ``app``'s broker cannot be reached now, or None when it can (one quick attempt, no retries)."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0, timeout=timeout)
    except Exception as exc:
        return f"cannot reach the broker {maybe_sanitize_url(app.conf.broker_url or 'amqp://')}: {exc}"
    return None


@dataclass(frozen=True)
class QueueNames:
    """The queues the engine sends to: replays (per version with ``version_routing``) and activities."""

    base: str
    version_routing: bool

    def replay(self, version_hash: str) -> str:
        return version_queue(self.base, version_hash) if self.version_routing else self.base

    def activity(self, queue: str | None) -> str:
        return queue or self.base


class WorkerProbe:
    """Answers "is the process holding this lease alive?" with one ping per doctor run.

    Args:
        app: the Celery app whose broker reaches the workers; None means liveness is unknown.
        timeout: seconds to wait for replies.
    """

    def __init__(self, app: Any | None, timeout: float = PING_TIMEOUT, queues: QueueNames | None = None) -> None:
        self._app: Any = app
        self._timeout = timeout
        self._nodes: dict[str, set[int]] | None = None
        self._consumed: dict[str, set[str]] = {}
        #: Where replays and activities are sent (None: queues are not checked).
        self.queues = queues
        self.error: str | None = None if app is not None else "no Celery app to ask"

    def _load(self) -> dict[str, set[int]] | None:
        if self._nodes is None and self.error is None:
            self.error = broker_error(self._app)
            if self.error is not None:
                return None
            try:
                inspect = self._app.control.inspect(timeout=self._timeout)
                replies = inspect.ping() or {}
                answering = self._app.control.inspect(destination=list(replies), timeout=self._timeout)
                stats = (answering.stats() or {}) if replies else {}
                active = (answering.active_queues() or {}) if replies else {}
            except Exception as exc:  # an unreachable broker: say so, do not guess
                self.error = f"cannot ask the workers: {type(exc).__name__}: {exc}"
                return None
            self._nodes = {node: _pids(stats.get(node)) for node in replies}
            self._consumed = {node: {q.get("name", "") for q in queues or []} for node, queues in active.items()}
        return self._nodes

    def live_nodes(self) -> set[str] | None:
        """The worker nodes that answered (None: unknown)."""
        nodes = self._load()
        return None if nodes is None else set(nodes)

    def consumed(self, queue: str) -> bool | None:
        """Whether some live worker consumes ``queue`` (None: unknown)."""
        if self._load() is None:
            return None
        return any(queue in names for names in self._consumed.values())

    def status(self, owner: str | None) -> str:
        """``alive``, ``dead`` or ``unknown`` for a lease owner ``node:pid``."""
        if not owner:
            return UNKNOWN
        nodes = self._load()
        if nodes is None:
            return UNKNOWN
        node, _, pid = owner.rpartition(":")
        if node not in nodes:
            return DEAD
        pids = nodes[node]
        return ALIVE if not pids or not pid.isdigit() or int(pid) in pids else DEAD


def _pids(stats: Any) -> set[int]:
    """The main and pool process ids a worker reports in ``inspect stats``."""
    if not isinstance(stats, dict):
        return set()
    pids = {stats["pid"]} if isinstance(stats.get("pid"), int) else set()
    processes = (stats.get("pool") or {}).get("processes") or []
    return pids | {p for p in processes if isinstance(p, int)}
