"""A run's saga: which completed activities can be undone, and undoing them, newest first, once each."""

from __future__ import annotations

from typing import Any

from .events import Event, Kind
from .futures import Future
from .replay import Execution


class Saga:
    """Compensation bookkeeping of one execution (fed by the events it reveals)."""

    def __init__(self, execution: Execution) -> None:
        self._execution = execution
        self._completed: list[tuple[int, str, dict[str, Any]]] = []
        self._compensable: dict[int, tuple[str, dict[str, Any]]] = {}
        self._compensated: set[int] = set()
        execution.on_reveal(self._track)

    def remember(self, command_id: int, name: str, scheduled: dict[str, Any]) -> None:
        """Activity ``command_id`` has a compensation, to run with its scheduled arguments."""
        self._compensable[command_id] = (name, scheduled)

    def _track(self, event: Event) -> None:
        if event.kind is Kind.ACTIVITY_COMPLETED and event.command_id is not None:
            self._completed.append((event.command_id, event.name or "", dict(event.payload)))

    def compensate(self) -> list[dict[str, Any]]:
        """Run the compensations of completed activities; see :meth:`WorkflowContext.compensate`."""
        execution = self._execution
        in_flight = [cid for cid in self._compensable if execution.resolved(cid) is None]
        if in_flight:
            execution.wait(
                lambda: all(execution.resolved(cid) is not None for cid in in_flight),
                f"{len(in_flight)} activities to finish before compensating",
            )
        outcomes: list[dict[str, Any]] = []
        for cid, name, result in reversed(self._completed):
            if cid in self._compensated or cid not in self._compensable:
                continue
            self._compensated.add(cid)
            _, scheduled = self._compensable[cid]
            ccid, _ = execution.command(
                Kind.COMPENSATION_SCHEDULED,
                name,
                {
                    "for_command": cid,
                    "args": scheduled["args"],
                    "kwargs": scheduled["kwargs"],
                    "result": result.get("result"),
                    "retry": scheduled["retry"],
                    "queue": scheduled["queue"],
                    "timeout": scheduled["timeout"],
                },
            )
            event = Future(execution, ccid, f"compensation of {name}").event()
            ok = event.kind is Kind.COMPENSATION_COMPLETED
            outcomes.append(
                {
                    "activity": name,
                    "command_id": cid,
                    "ok": ok,
                    "error": None if ok else event.payload.get("error"),
                    "attempts": event.payload.get("attempts"),
                }
            )
        return outcomes
