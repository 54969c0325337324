"""A worker's cached execution never outranks the journal (it may have lost commits it acknowledged)."""

from __future__ import annotations

import threading
from pathlib import Path

from continuum_celery import workflow
from continuum_celery.embedded import embedded_engine
from tests.support.stack import wait_until


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


def test_an_execution_whose_run_ended_in_another_process_is_closed_at_the_next_claim(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'journal.sqlite3'}"
    here, there = embedded_engine(url, name="cache-here"), embedded_engine(url, name="cache-there")
    try:
        handle = here.client.start(greeter, "Ada")
        assert here.stepper.step(handle.id) == "suspended"
        assert len(here.cache) == 1  # the body is parked in this process, waiting for the signal
        handle.signal("greeting", "Hello")
        assert there.stepper.step(handle.id) == "completed"  # another process ends the run
        threads = threading.active_count()

        assert here.stepper.step(handle.id) == "skipped"  # a late delivery: nothing to claim
        assert len(here.cache) == 0
        wait_until(lambda: threading.active_count() == threads - 1, 10, "the parked body thread to end")
    finally:
        for engine in (here, there):
            engine.cache.clear()
            engine.journal.close()
