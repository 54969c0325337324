"""``continuum doctor`` names why each unfinished run waits, from the journal and from Celery's ping."""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

from continuum_celery.cli import main
from continuum_celery.journal.records import NewRun
from tests.support import flows_ops as ops
from tests.support.stack import Stack, wait_until


def cli(stack: Stack, *args: str) -> Result:
    """Run ``celery -A <the stack's app> continuum <args>`` in-process, as Celery would invoke it."""
    return CliRunner().invoke(main, list(args), obj=CLIContext(app=stack.client().app, no_color=True, workdir=None))


def diagnoses(stack: Stack, *run_ids: str) -> tuple[int, dict[str, dict[str, Any]]]:
    result = cli(stack, "doctor", "--json", *run_ids)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, {d["run_id"]: d for d in json.loads(result.stdout)["runs"]}


def kinds(diagnosis: dict[str, Any]) -> list[str]:
    return [r["kind"] for r in diagnosis["reasons"]]


def has_event(stack: Stack, run_id: str, kind: str) -> bool:
    return bool(stack.sql("SELECT 1 FROM continuum_events WHERE run_id = :r AND kind = :k", r=run_id, k=kind))


def marked(stack: Stack, name: str) -> bool:
    return bool(stack.sql("SELECT 1 FROM test_marks WHERE name = :n", n=name))


def test_doctor_names_each_waiting_state_with_a_live_worker(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    stack.modules = ("tests.support.flows_ops",)
    engine = stack.client()
    stack.worker(concurrency=2)

    sleeping = ops.sleeper.start({"seconds": 3600})
    waiting = ops.waiter.start({"signal": "go", "timeout": 600})
    parent = ops.parent.start({"signal": "go"})
    flaky = ops.flaky.start({"backoff": 3600, "reason": "the payment service is down"})
    blocking = ops.blocking_step.start(f"live-{stack.token}")
    # A run pinned to a version no worker has: the worker that takes it (or the sweep) parks it.
    unknown = f"unknown-{stack.token}"
    engine.journal.create_run(NewRun(id=unknown, workflow="ops.quick", version_hash="f" * 16, version=7, input={}))
    engine.dispatcher.replay(unknown, "ops.quick")
    # A run whose first step ran on other code (here: the other branch), so the worker cannot replay it.
    drifting = f"drift-{stack.token}"
    defn = ops.branching
    engine.journal.create_run(
        NewRun(id=drifting, workflow=defn.name, version_hash=defn.version_hash, version=defn.version, input="x")
    )
    monkeypatch.setenv("CONTINUUM_TEST_BRANCH", "b")
    monkeypatch.setattr(engine.stepper, "inline_activities", False)  # only the first step runs here
    engine.stepper.step(drifting)
    monkeypatch.delenv("CONTINUUM_TEST_BRANCH")

    wait_until(lambda: has_event(stack, sleeping.id, "timer_scheduled"), 30, "the timer")
    wait_until(lambda: has_event(stack, waiting.id, "signal_wait"), 30, "the signal wait")
    wait_until(lambda: has_event(stack, parent.id, "child_started"), 30, "the child")
    wait_until(
        lambda: stack.sql("SELECT 1 FROM continuum_activity_tasks WHERE run_id = :r AND attempt = 2", r=flaky.id),
        30,
        "the first attempt to fail",
    )
    wait_until(lambda: marked(stack, f"holding:live-{stack.token}"), 30, "the step to hold its lease")
    wait_until(
        lambda: stack.sql("SELECT 1 FROM continuum_runs WHERE id = :r AND stuck_reason = 'nondeterminism'", r=drifting),
        30,
        "the replay to fail",
    )
    engine.sweep_once()
    wait_until(
        lambda: stack.sql("SELECT 1 FROM continuum_runs WHERE id = :r AND stuck_reason = 'unknown_version'", r=unknown),
        30,
        "the unknown version to be parked",
    )

    code, found = diagnoses(stack)
    assert code == 1  # two runs are stuck
    assert kinds(found[sleeping.id]) == ["timer"]
    assert "waiting on a timer until" in found[sleeping.id]["reasons"][0]["message"]
    [signal] = found[waiting.id]["reasons"]
    assert (signal["kind"], signal["details"]["signal"]) == ("signal", "go")
    assert signal["details"]["timeout_at"] is not None
    [child] = found[parent.id]["reasons"]
    child_id = child["details"]["child_run_id"]
    assert child["kind"] == "child" and child["details"]["child_state"] == "suspended"
    assert kinds(found[child_id]) == ["signal"]
    [retrying] = found[flaky.id]["reasons"]
    assert (retrying["kind"], retrying["details"]["attempt"], retrying["details"]["max_attempts"]) == ("activity", 2, 3)
    assert "retry at" in retrying["message"] and "the payment service is down" in retrying["message"]
    [lease] = [r for r in found[blocking.id]["reasons"] if r["kind"] == "lease"]
    assert lease["details"]["owner_status"] == "alive" and not lease["attention"]
    assert lease["details"]["owner"].startswith("w")
    assert kinds(found[unknown]) == ["unknown_version"]
    assert found[unknown]["attention"]
    assert kinds(found[drifting]) == ["nondeterminism"] and found[drifting]["attention"]
    for fine in (sleeping.id, waiting.id, parent.id, flaky.id, blocking.id):
        assert not found[fine]["attention"], found[fine]

    # The human form says the same, one line per reason, and names the run that needs attention.
    text = cli(stack, "doctor", sleeping.id, drifting)
    assert text.exit_code == 1
    assert f"{drifting}  ops.branching  suspended  [needs attention]" in text.output
    assert "waiting on a timer until" in text.output

    # `retry` runs the back-off attempt now: it fails again and waits for the last one.
    done = cli(stack, "retry", flaky.id, "--by", "ops-oncall")
    assert done.exit_code == 0, done.output
    assert "always_fails runs its next attempt now" in done.output
    wait_until(
        lambda: stack.sql("SELECT 1 FROM continuum_activity_tasks WHERE run_id = :r AND attempt = 3", r=flaky.id),
        30,
        "the retried attempt to run",
    )
    _, after = diagnoses(stack, flaky.id)
    assert after[flaky.id]["reasons"][0]["details"]["attempt"] == 3
    [audit] = stack.sql(
        "SELECT payload FROM continuum_events WHERE run_id = :r AND kind = 'retry_requested'", r=flaky.id
    )
    assert json.loads(audit.payload)["by"] == "ops-oncall"

    stack.sql("INSERT INTO test_marks (name) VALUES (:n)", n=f"release:live-{stack.token}")


def test_doctor_says_a_sigkilled_lease_holder_is_not_alive(stack: Stack) -> None:
    stack.modules = ("tests.support.flows_ops",)
    stack.client()
    doomed = stack.worker("doomed", concurrency=2)
    in_activity = ops.holder.start(f"act-{stack.token}")
    in_step = ops.blocking_step.start(f"step-{stack.token}")
    wait_until(
        lambda: marked(stack, f"holding:act-{stack.token}") and marked(stack, f"holding:step-{stack.token}"),
        60,
        "the activity and the step to hold",
    )
    doomed.kill()
    stack.worker("survivor", concurrency=1)  # a live worker answers the ping; the dead one cannot

    code, found = diagnoses(stack, in_activity.id, in_step.id)
    assert code == 1
    [task] = [r for r in found[in_activity.id]["reasons"] if r["kind"] == "activity"]
    assert task["details"]["state"] == "running" and task["details"]["owner"].startswith("doomed@")
    assert task["details"]["owner_status"] == "dead" and task["attention"]
    assert "attempt 1 of 5: running on doomed@" in task["message"] and "NOT alive" in task["message"]
    [lease] = [r for r in found[in_step.id]["reasons"] if r["kind"] == "lease"]
    assert lease["details"]["owner"].startswith("doomed@")
    assert lease["details"]["owner_status"] == "dead" and lease["attention"]
    assert found[in_step.id]["state"] == "running"

    for key in (f"act-{stack.token}", f"step-{stack.token}"):
        stack.sql("INSERT INTO test_marks (name) VALUES (:n)", n=f"release:{key}")


def test_doctor_flags_an_attempt_past_its_deadline_or_heartbeat_timeout(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempts claimed by a worker that vanished (no worker, no beat left to give them up)."""
    from tests.support.flows_liveness import stall_flow, timeout_flow

    stack.modules = ("tests.support.flows", "tests.support.flows_liveness")
    engine = stack.client()
    monkeypatch.setattr(engine.stepper, "inline_activities", False)
    overran = timeout_flow.start({"key": f"d-{stack.token}", "seconds": 1.0})  # timeout 2 s
    stalled = stall_flow.start(f"s-{stack.token}")  # heartbeat_timeout 2 s, timeout 120 s
    for handle in (overran, stalled):
        engine.stepper.step(handle.id)  # schedules the activity; no worker takes it
        claim = engine.journal.claim_activity(f"{handle.id}:1", 1, "ghost@nowhere:4242")
        assert claim is not None
        assert engine.journal.heartbeat(claim.task_id, 1, {"rows": 1200}) == "running"

    def flagged() -> dict[str, dict[str, Any]] | None:
        _, found = diagnoses(stack, overran.id, stalled.id)
        overrun = [r for d in found.values() for r in d["reasons"] if "should have given it up" in r["message"]]
        return found if len(overrun) == 2 else None

    found = wait_until(flagged, 30, "both attempts to overrun", interval=0.5)
    assert diagnoses(stack, overran.id, stalled.id)[0] == 1
    [over] = [r for r in found[overran.id]["reasons"] if r["kind"] == "activity"]
    assert "attempt 1 of 2: running on ghost@nowhere:4242" in over["message"]
    assert "past its deadline" in over["message"] and "(timeout 2 s)" in over["message"]
    assert "last heartbeat" in over["message"] and '{"rows": 1200}' in over["message"] and over["attention"]
    assert "keep a worker running" in over["message"]
    [stall] = [r for r in found[stalled.id]["reasons"] if r["kind"] == "activity"]
    assert "no heartbeat within its heartbeat_timeout of 2 s" in stall["message"]
    assert stall["details"]["last_heartbeat"] == {"rows": 1200}

    shown = cli(stack, "runs", "show", stalled.id)
    assert shown.exit_code == 0, shown.output
    assert "stalls attempt 1 of 2 running on ghost@nowhere:4242" in shown.output
    assert "last heartbeat" in shown.output and '{"rows": 1200}' in shown.output
    as_json = json.loads(cli(stack, "runs", "show", "--json", stalled.id).stdout)
    assert as_json["attempts"][0]["last_heartbeat"] == {"rows": 1200}


def test_doctor_flags_a_queue_or_a_version_no_live_worker_serves(stack: Stack) -> None:
    from tests.support.flows_liveness import elsewhere_flow

    stack.modules = ("tests.support.flows", "tests.support.flows_liveness")
    engine = stack.client()
    stack.worker(concurrency=1)
    stranded = elsewhere_flow.start(None)
    wait_until(lambda: has_event(stack, stranded.id, "activity_scheduled"), 30, "the activity to be scheduled")
    orphan = f"orphan-{stack.token}"
    engine.journal.create_run(
        NewRun(id=orphan, workflow=elsewhere_flow.name, version_hash="e" * 16, version=9, input=None)
    )

    code, found = diagnoses(stack, stranded.id, orphan)
    assert code == 1
    [queue] = [r for r in found[stranded.id]["reasons"] if r["kind"] == "queue"]
    assert queue["attention"] and queue["details"]["queue"] == "nowhere-queue"
    assert "`celery -A app worker -Q nowhere-queue`" in queue["message"]
    # Not yet parked: no live worker has that version (or, once a sweep parked it, unknown_version).
    [version] = [r for r in found[orphan]["reasons"] if r["kind"] in ("version", "unknown_version")]
    assert version["attention"] and "e" * 16 in version["message"]
