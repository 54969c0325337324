"""Versions across deploys, with real PostgreSQL, Redis and celery worker processes.

Workers run ``tests.support.flows_v1`` (deploy 1), ``flows_v2`` (deploy 2) or
both; the test process knows both bodies and starts runs on either.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from continuum_celery.cli import main as cli
from continuum_celery.journal.version_rules import STOPPED_AT
from tests.support import rabbit
from tests.support.stack import Stack, on_each_broker, wait_until

V1, V2 = "tests.support.flows_v1", "tests.support.flows_v2"


def kinds(handle) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.kind.value for e in handle.history()]


def marks(stack: Stack, name: str) -> int:
    return int(stack.sql("SELECT count(*) FROM test_marks WHERE name = :n", n=name)[0][0])


def stepped_by(stack: Stack, run_id: str) -> set[str]:
    """The workers that ran a replay step of ``run_id`` (marks written by tests.support.version_marks)."""
    rows = stack.sql("SELECT name FROM test_marks WHERE name LIKE :p", p=f"replay_step:{run_id}:%")
    return {r[0].rsplit(":", 1)[1] for r in rows}


def version_rows(stack: Stack, version_hash: str) -> list[Any]:
    return stack.sql("SELECT * FROM continuum_workflow_versions WHERE version_hash = :h", h=version_hash)


@pytest.mark.slow
@on_each_broker
def test_rolling_deploy_keeps_each_run_on_the_code_it_started_on(stack: Stack) -> None:
    stack.modules = (V1, V2)
    stack.client()
    from tests.support.flows_v1 import order_v1
    from tests.support.flows_v2 import order_v2

    stack.beat()
    worker_a = stack.worker("deploy-a", CONTINUUM_TEST_MODULES=V1)
    old = order_v1.start({"id": "old"})
    wait_until(lambda: "signal_wait" in kinds(old), 30, "the v1 run to wait for its signal")
    wait_until(lambda: old.status() == "suspended", 10, "the v1 run to suspend")
    wait_until(lambda: "deploy-a" in stepped_by(stack, old.id), 10, "worker A to record its step")

    worker_a.stop()
    # A clean shutdown withdraws the worker's versions at once (the rows stay, stopped, for `versions prune`).
    stopped = stack.sql("SELECT last_seen_at FROM continuum_workflow_versions WHERE hostname LIKE 'deploy-a@%'")
    assert stopped and {r.last_seen_at for r in stopped} == {STOPPED_AT}
    worker_b = stack.worker("deploy-b", CONTINUUM_TEST_MODULES=V2)

    new = order_v2.start({"id": "new"})
    wait_until(lambda: "signal_wait" in kinds(new), 30, "the v2 run to wait for its signal")
    new.signal("go", "ship it")
    assert new.result(timeout=30) == {"body": "v2", "order": "new", "decision": "ship it", "audited": True}

    history_before = kinds(old)
    old.signal("go", "late")
    wait_until(lambda: old.record().stuck_reason == "unknown_version", 30, "the sweep to park the run nobody can serve")
    wait_until(lambda: marks(stack, f"unknown_version:{order_v1.version_hash}") >= 2, 30, "two sweeps to report it")
    record = old.record()
    assert record.state == "suspended"
    assert record.version_hash == order_v1.version_hash
    assert kinds(old) == history_before, "no worker may have stepped the v1 run"
    # Reported once per sweep, not in a loop (the sweep's own mark follows its report).
    reports = marks(stack, f"unknown_version:{order_v1.version_hash}")
    assert reports <= marks(stack, "sweep") + 1
    # Logged once per worker process (B has two), however many sweeps report it.
    warned = worker_b.output().count(f"pinned to version {order_v1.version_hash}")
    assert 1 <= warned <= 2 <= reports, (warned, reports)

    worker_c = stack.worker("deploy-c", CONTINUUM_TEST_MODULES=f"{V1},{V2}")
    assert f"celery.v.{order_v1.version_hash}" in worker_c.output(), "C consumes the v1 queue"
    assert f"celery.v.{order_v1.version_hash}" not in worker_b.output(), "B does not"
    assert old.result(timeout=30) == {"body": "v1", "order": "old", "decision": "late"}
    # A step's mark is written after its commit, so the result can be read before C's last mark lands.
    wait_until(lambda: "deploy-c" in stepped_by(stack, old.id), 10, "worker C to record its steps")
    assert stepped_by(stack, old.id) == {"deploy-a", "deploy-c"}, "worker B never stepped the v1 run"
    assert stepped_by(stack, new.id) == {"deploy-b"}
    assert old.record().stuck_reason is None

    # The deploy is over: C stops, B (v2 only) stays. v1 has no live worker and no unfinished run.
    worker_c.stop()
    v1_queue, v2_queue = (f"celery.v.{order_v1.version_hash}", f"celery.v.{order_v2.version_hash}")
    assert {v1_queue, v2_queue} <= stack.version_queues()
    dry = stack.continuum("versions", "prune", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert [(v["queue"], v["removed"]) for v in json.loads(dry.stdout)["versions"]] == [(v1_queue, False)]
    assert v1_queue in stack.version_queues() and version_rows(stack, order_v1.version_hash)
    pruned = stack.continuum("versions", "prune", "--json")
    assert pruned.returncode == 0, pruned.stderr
    assert [(v["queue"], v["removed"]) for v in json.loads(pruned.stdout)["versions"]] == [(v1_queue, True)]
    left = stack.version_queues()
    assert v1_queue not in left and v2_queue in left, left
    assert version_rows(stack, order_v1.version_hash) == [] and version_rows(stack, order_v2.version_hash)
    if stack.broker == "rabbitmq":
        assert v1_queue not in rabbit.exchanges(stack.vhost) and v2_queue in rabbit.exchanges(stack.vhost)
    again = stack.continuum("versions", "prune", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["versions"] == [], "safe to repeat: nothing left"
    # B still serves v2 through its queue.
    later = order_v2.start({"id": "after-prune"})
    wait_until(lambda: "signal_wait" in kinds(later), 30, "a v2 run after the prune to wait for its signal")


@pytest.mark.slow
def test_a_resumed_run_replays_its_journaled_version_not_the_newest(stack: Stack) -> None:
    stack.modules = (V1, V2)
    stack.client()
    from tests.support.flows_v1 import order_v1
    from tests.support.flows_v2 import order_v2

    worker = stack.worker("both", CONTINUUM_TEST_MODULES=f"{V1},{V2}")
    old, new = order_v1.start({"id": "a"}), order_v2.start({"id": "b"})
    for handle in (old, new):
        wait_until(lambda h=handle: "signal_wait" in kinds(h), 30, "the runs to wait for their signal")
    queues = {f"celery.v.{order_v1.version_hash}", f"celery.v.{order_v2.version_hash}"}
    assert all(q in worker.output() for q in queues), "the worker consumes each loaded version's queue"

    old.signal("go", 1)
    new.signal("go", 2)
    assert old.result(timeout=30) == {"body": "v1", "order": "a", "decision": 1}
    assert new.result(timeout=30)["body"] == "v2"
    assert old.record().version_hash == order_v1.version_hash != order_v2.version_hash


@pytest.mark.slow
def test_continuum_versions_lists_hashes_workers_and_pinned_runs(stack: Stack) -> None:
    stack.modules = (V1, V2)
    stack.client()
    from tests.support.flows_v1 import order_v1
    from tests.support.flows_v2 import order_v2

    stack.worker("only-v2", CONTINUUM_TEST_MODULES=V2)
    pinned = [order_v1.start({"id": f"p{i}"}) for i in range(2)]
    runner = CliRunner()

    result = runner.invoke(cli, ["--database-url", stack.database_url, "versions", "--json"])
    assert result.exit_code == 0, result.output
    entries = {e["version_hash"]: e for e in json.loads(result.output)["versions"]}
    v1, v2 = entries[order_v1.version_hash], entries[order_v2.version_hash]
    assert (v1["workflow"], v1["pinned_runs"], v1["workers"], v1["live"]) == ("tests.versions.order", 2, [], False)
    assert (v2["version"], v2["pinned_runs"], v2["live"]) == (2, 0, True)
    assert [w["hostname"].split("@")[0] for w in v2["workers"]] == ["only-v2"]

    text = runner.invoke(cli, ["--database-url", stack.database_url, "versions"])
    assert text.exit_code == 0, text.output
    assert "WORKFLOW" in text.output and order_v2.version_hash in text.output and "only-v2@" in text.output
    assert f"2 unfinished run(s) of tests.versions.order are pinned to {order_v1.version_hash}" in text.output
    for handle in pinned:
        assert handle.status() in ("pending", "suspended")
