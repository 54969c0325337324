"""``continuum versions prune``: remove the broker queues and registry rows of versions nothing needs.

Every version a worker served has a queue (``<base>.v.<hash>``, with an exchange of the same
name on AMQP brokers) that outlives the code. A version is stale when no unfinished run is
pinned to it and no live worker serves it (:func:`~continuum_celery.journal.version_rules.stale_versions`);
its queue and exchange are deleted, then its rows in ``continuum_workflow_versions``.

Safe on every deploy: a queue that a worker consumes is never deleted (``if_unused``), the
rows are deleted only if the version is still stale when the transaction locks them, and if
a worker with that code starts again it declares its queue anew. Queues go before rows, so a
failed run of the command leaves the version listed for the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .journal.version_rules import stale_versions
from .routing import version_queue

#: The note of a version a dry run would remove.
WOULD_REMOVE = "would be removed"

if TYPE_CHECKING:
    from celery import Celery

    from .journal.base import Journal


@dataclass(frozen=True)
class PrunedVersion:
    """What prune did (or, in a dry run, would do) for one stale version.

    Attributes:
        workflow: the workflow's name.
        version_hash: the version's hash.
        queue: its broker queue.
        messages: messages the queue held (discarded with it); None when the broker cannot say.
        removed: whether its queue and rows are gone (False in a dry run, or when skipped).
        note: why it was skipped, or what happened.
    """

    workflow: str
    version_hash: str
    queue: str
    messages: int | None
    removed: bool
    note: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def prune_versions(
    journal: Journal, app: Celery, base: str, *, live_within: float, dry_run: bool = False
) -> list[PrunedVersion]:
    """Remove the queue, exchange and registry rows of every stale version (see the module docstring).

    Args:
        journal: the journal whose registry lists the versions.
        app: the Celery app whose broker holds the queues.
        base: the engine's queue; version queues are ``<base>.v.<hash>``.
        live_within: seconds within which a worker's refresh counts as live (``version_ttl``).
        dry_run: report what would be removed, change nothing.

    Raises:
        ConfigurationError: the broker cannot be reached (nothing was removed).
    """
    live_after = datetime.now(timezone.utc) - timedelta(seconds=live_within)
    entries = journal.list_versions()
    stale = stale_versions(entries, live_after)
    # A hash that another, still needed, workflow shares keeps its queue.
    needed = {e["version_hash"] for e in entries} - {h for _, h in stale}
    if not stale:
        return []
    out: list[PrunedVersion] = []
    with _broker(app) as queues:
        for workflow, version_hash in stale:
            queue = version_queue(base, version_hash)
            messages, consumers = queues.inspect(queue)
            if version_hash in needed:
                out.append(PrunedVersion(workflow, version_hash, queue, messages, False, "kept: its hash is in use"))
            elif consumers:
                out.append(PrunedVersion(workflow, version_hash, queue, messages, False, "a worker consumes it"))
            elif dry_run:
                out.append(PrunedVersion(workflow, version_hash, queue, messages, False, WOULD_REMOVE))
            else:
                error = queues.delete(queue)
                out.append(PrunedVersion(workflow, version_hash, queue, messages, error is None, error or "removed"))
    removed = [(p.workflow, p.version_hash) for p in out if p.removed]
    if not removed:
        return out
    forgotten = set(journal.forget_versions(removed, live_within=live_within))
    kept = "queue removed; rows kept: in use again"
    return [
        p
        if (p.workflow, p.version_hash) in forgotten or not p.removed
        else PrunedVersion(p.workflow, p.version_hash, p.queue, p.messages, True, kept)
        for p in out
    ]


class _Queues:
    """Queue inspection and deletion on one broker connection; a channel per operation.

    AMQP closes a channel on a refused operation (404 not found, 406 in use), so none is reused.
    """

    def __init__(self, app: Celery, connection: Any) -> None:
        from kombu.transport.virtual import Transport as VirtualTransport

        self._app = app
        self._connection = connection
        # Redis and other virtual transports delete only the bindings a channel knows of.
        self._virtual = isinstance(connection.transport, VirtualTransport)

    def _on_channel(self, operation: Callable[[Any], Any]) -> Any:
        channel = self._connection.channel()
        try:
            return operation(channel)
        finally:
            with suppress(Exception):  # already closed by the broker's refusal
                channel.close()

    def inspect(self, queue: str) -> tuple[int | None, int]:
        """(messages, consumers) of ``queue``; (0, 0) when the broker has no such queue."""
        try:
            declared = self._on_channel(lambda ch: ch.queue_declare(queue=queue, passive=True))
        except self._connection.channel_errors:
            return 0, 0
        return int(declared.message_count), int(declared.consumer_count)

    def delete(self, queue: str) -> str | None:
        """Delete ``queue`` unless a worker consumes it, then its exchange if unused; None, or why not."""
        # The queue as workers declare it (exchange and routing key of its own name).
        entity = self._app.amqp.queues.new_missing(queue)

        def drop(channel: Any) -> None:
            if self._virtual:
                entity(channel).declare()  # the channel learns the binding, which the delete then removes
            channel.queue_delete(queue=queue, if_unused=True)

        try:
            self._on_channel(drop)
        except self._connection.channel_errors as exc:
            return f"kept: the broker refused to delete it ({exc})"
        with suppress(*self._connection.channel_errors):  # bound elsewhere, or never declared: leave it
            self._on_channel(lambda ch: ch.exchange_delete(exchange=queue, if_unused=True))
        return None


@contextmanager
def _broker(app: Celery) -> Iterator[_Queues]:
    """The broker's queues over one connection.

    Raises:
        ConfigurationError: the broker cannot be reached.
    """
    from .worker_probe import broker_error

    problem = broker_error(app)
    if problem is not None:
        raise ConfigurationError(f"{problem}; nothing was pruned. Check the broker URL and that it is up.")
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
        yield _Queues(app, connection)


__all__ = ["WOULD_REMOVE", "PrunedVersion", "prune_versions"]
