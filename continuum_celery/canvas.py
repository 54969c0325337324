"""Workflows in Celery canvas: what follows a run's start task gets the run's result when the run ends.

A run started by a Celery task (``wf.s()``, ``wf.apply_async()``) behaves like one long
task whose id is the start task's id. The start task stores what follows it (the
``link`` callbacks, ``link_error`` errbacks, the rest of a chain, the chord it is a
header part of) with the run in the journal, in the run's own transaction, and tells
Celery not to continue the canvas itself (``Ignore``): no worker waits for the run.

When the run ends, :class:`CanvasSender` does what Celery's tracer does after a task
returns, through Celery's public API: it sends the callbacks and the next task of the
chain with the run's result, then stores the result under the start task's id with the
request context (``backend.mark_as_done``, which also counts a chord part), or on
failure ``backend.mark_as_failure`` with a :class:`WorkflowFailed` (the chord fails, the
chain's remaining results fail, the errbacks run). A task event under the start task's
id tells Flower the task's outcome.

The journal decides when: the worker that ends a run sends its links right after the
commit, and the sweep sends any a dead worker left behind. A link is claimed in the
journal for ``hold`` seconds before it is sent and marked sent right after; only a sender
lost between the two is repeated, once ``hold`` has passed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery.app.task import Context
from celery.canvas import signature

from .errors import WorkflowFailed
from .journal.base import Journal
from .journal.records import CanvasLink, DueLink
from .serialization import check_json, roundtrip

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult

log = logging.getLogger(__name__)

#: The fields of a start task's request that say what follows it in the canvas, or where its result goes.
REQUEST_FIELDS = (
    "callbacks",
    "errbacks",
    "chain",
    "chord",
    "group",
    "group_index",
    "root_id",
    "parent_id",
    "reply_to",
    "correlation_id",
    "ignore_result",
    "hostname",
)


def link_of(request: Any, max_payload_bytes: int) -> CanvasLink:
    """The canvas link of a start task's ``request`` (its Celery ``Context``).

    Raises:
        PayloadError: the request's signatures are not JSON (a pickled canvas cannot be journaled).
    """
    fields = {name: getattr(request, name, None) for name in REQUEST_FIELDS}
    # The name monitors and the extended result show: the workflow's, when the start is shadowed by it.
    fields["task"] = getattr(request, "shadow", None) or getattr(request, "task", None)
    delivery = getattr(request, "delivery_info", None) or {}
    fields["delivery_info"] = {k: delivery[k] for k in ("exchange", "routing_key", "priority") if k in delivery}
    check_json(fields, f"canvas of start task {request.id}", max_payload_bytes)
    return CanvasLink(task_id=request.id, request=roundtrip(fields))


class CanvasSender:
    """Sends the links of ended runs: results, chord parts, callbacks, chains and errbacks.

    Args:
        app: the Celery app whose result backend and broker carry the canvas.
        journal: where links are claimed and marked sent.
        hold: seconds a claimed link waits before another sender may take it.
        batch: most links sent per call.
        task_events: whether to send ``task-succeeded`` / ``task-failed`` events (a worker with ``-E``).
        hostname: the node name events carry.
    """

    def __init__(
        self,
        app: Celery,
        journal: Callable[[], Journal],
        *,
        hold: float,
        batch: int,
        task_events: Callable[[], bool],
        hostname: Callable[[], str],
    ) -> None:
        self.app = app
        self._journal = journal
        self.hold = hold
        self.batch = batch
        self._task_events = task_events
        self._hostname = hostname

    def send_due(self, run_id: str | None = None) -> int:
        """Send the due links (of ``run_id``, or of any run); return how many went out."""
        journal = self._journal()
        sent = 0
        for link in journal.claim_links(run_id=run_id, batch=self.batch, hold=self.hold):
            try:
                self._continue(link)
            except Exception:  # claimed, not marked: sent again once the hold passes
                log.warning("could not continue the canvas of run %s; the sweep will retry", link.run_id, exc_info=True)
                continue
            journal.links_sent([link.task_id])
            sent += 1
        return sent

    def _continue(self, link: DueLink) -> None:
        request = _context(link)
        backend = self.app.backend
        if link.state == "completed":
            # Like Celery's tracer: what follows is sent before the result is stored, so the
            # stored result lists it as children.
            request.children.extend(self._send_next(link.result, request))
            backend.mark_as_done(link.task_id, link.result, request=request)
            self._event(link, "task-succeeded", result=f"<hidden> run={link.run_id}")
        else:
            exc = WorkflowFailed.of_run(link.run_id, link.workflow, link.state, link.error)
            backend.mark_as_failure(link.task_id, exc, request=request, call_errbacks=True)
            self._event(link, "task-failed", exception=repr(exc), traceback="")

    def _send_next(self, result: Any, request: Context) -> list[AsyncResult]:
        """Send the callbacks, then the next task of the chain (with the chain's rest), with ``result``."""
        parent = {"parent_id": request.id, "root_id": request.root_id or request.id}
        sent = [signature(cb, app=self.app).apply_async((result,), **parent) for cb in request.callbacks or ()]
        if request.chain:
            rest = list(request.chain)
            sent.append(signature(rest.pop(), app=self.app).apply_async((result,), chain=rest, **parent))
        return sent

    def _event(self, link: DueLink, kind: str, **fields: Any) -> None:
        """Tell monitors the start task's outcome (best effort: events are never the record)."""
        if not self._task_events():
            return
        try:
            with self.app.events.default_dispatcher(hostname=self._hostname()) as dispatcher:
                dispatcher.send(kind, uuid=link.task_id, **fields)
        except Exception:
            log.warning("could not send the %s event of run %s", kind, link.run_id, exc_info=True)


def _context(link: DueLink) -> Context:
    """The start task's request as Celery's backend and canvas code read it."""
    request = Context(link.request)
    request.id = link.task_id
    request.delivery_info = dict(request.delivery_info or {})
    request.called_directly = False
    return request
