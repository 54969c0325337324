"""A worker's cached execution never outranks the journal (it may have lost commits it acknowledged)."""

from __future__ import annotations

from pathlib import Path

from continuum_celery import workflow
from continuum_celery.embedded import embedded_engine


@workflow(workflow="tests.stale_cache.greeter")
def greeter(ctx, name: str) -> str:
    return f"{ctx.wait_signal('greeting')}, {name}"


def test_an_execution_ahead_of_the_journal_is_dropped_and_the_run_replayed(tmp_path: Path) -> None:
    engine = embedded_engine(f"sqlite:///{tmp_path / 'journal.sqlite3'}", name="stale-cache")
    try:
        handle = engine.client.start(greeter, "Ada")
        assert engine.stepper.step(handle.id) == "suspended"  # waits for the signal; the execution is cached
        cached = engine.cache.take(handle.id)
        assert cached is not None
        journaled = engine.journal.get_run(handle.id).last_seq
        # As if the database had failed over to a replica missing the last commits this worker saw.
        cached.acknowledge(journaled + 5)
        engine.cache.put(handle.id, cached)

        handle.signal("greeting", "Hello")
        assert engine.stepper.step(handle.id) == "completed"
        assert handle.result(timeout=5) == "Hello, Ada"
        seqs = [e.seq for e in handle.history()]
        assert seqs == list(range(1, len(seqs) + 1))
    finally:
        engine.cache.clear()
        engine.journal.close()
