"""Live executions kept in a worker process between steps (least recently used first out).

A hit advances a run by only its new events; a miss replays its history. The
cache is an optimisation only: the journal is always the truth.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .replay import Execution


class ExecutionCache:
    """A bounded, thread-safe map of run id to paused execution."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, Execution] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, run_id: str) -> Execution | None:
        """Remove and return the run's execution, so one step at a time owns it."""
        with self._lock:
            return self._items.pop(run_id, None)

    def put(self, run_id: str, execution: Execution) -> None:
        """Keep a paused execution; evict the least recently used beyond the size.

        An execution it replaces (another step of the run kept its own meanwhile) is closed.
        """
        evicted: list[Execution] = []
        with self._lock:
            replaced = self._items.pop(run_id, None)
            if replaced is not None and replaced is not execution:
                evicted.append(replaced)
            self._items[run_id] = execution
            while len(self._items) > self._size:
                evicted.append(self._items.popitem(last=False)[1])
        for old in evicted:
            old.close()

    def discard(self, run_id: str) -> None:
        """Close and forget the run's execution, if one is kept (the run ended in another process)."""
        execution = self.take(run_id)
        if execution is not None:
            execution.close()

    def clear(self) -> None:
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
        for execution in items:
            execution.close()

    def __len__(self) -> int:
        return len(self._items)
