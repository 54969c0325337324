"""The ``continuum`` command through click's runner, against real PostgreSQL, on runs in every state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

from continuum_celery import Continuum, runtime
from continuum_celery.cli import main
from continuum_celery.cli_context import Operator
from continuum_celery.embedded import embedded_engine, running_worker
from continuum_celery.errors import JournalError
from continuum_celery.journal.records import NewRun
from continuum_celery.journal.schema import head_revision
from tests.conftest import create_database, drop_database
from tests.support import flows_ops as ops
from tests.support.stack import ROOT, wait_until


@dataclass
class Fleet:
    """A journal holding runs in every state, and the embedded engine that made them."""

    url: str
    engine: Continuum
    ids: dict[str, str]

    def sql(self, statement: str, **params: Any) -> list[Any]:
        with self.engine.journal.engine.begin() as conn:  # type: ignore[attr-defined]
            result = conn.execute(sa.text(statement), params)
            return list(result) if result.returns_rows else []


def _has(engine: Continuum, run_id: str, kind: str) -> bool:
    return any(e.kind.value == kind for e in engine.journal.history(run_id))


@pytest.fixture(scope="module")
def fleet(run_token: str) -> Iterator[Fleet]:
    name = f"continuum_cli_{run_token}"
    url = create_database(name)
    engine = embedded_engine(url, name=f"cli-{run_token}")
    journal = engine.journal
    ids: dict[str, str] = {}
    try:
        with running_worker(engine):
            ids["completed"] = ops.quick.start({"label": "done"}).id
            ids["failed"] = ops.failing.start({"reason": "card declined"}).id
            ids["continued"] = ops.counter.start(0).id
            ids["waiting"] = ops.waiter.start({"signal": "go"}).id
            ids["to_cancel"] = ops.waiter.start({"signal": "go"}).id
            ids["cancelled"] = ops.waiter.start({"signal": "go"}).id
            ids["parent"] = ops.parent.start({"signal": "go"}).id
            ids["flaky"] = ops.flaky.start({"backoff": 3600}).id
            ids["stuck"] = f"stuck-{run_token}"
            journal.create_run(NewRun(ids["stuck"], "ops.quick", "0" * 16, 9, {}))
            engine.dispatcher.replay(ids["stuck"], "ops.quick")
            for key in ("waiting", "to_cancel", "cancelled"):
                wait_until(lambda key=key: _has(engine, ids[key], "signal_wait"), 30, f"{key} to wait")
            engine.client.get(ids["cancelled"]).cancel()
            wait_until(lambda: journal.get_run(ids["cancelled"]).state == "cancelled", 30, "the cancel")
            wait_until(lambda: journal.get_run(ids["stuck"]).stuck_reason == "unknown_version", 30, "the stuck run")
            wait_until(lambda: journal.get_run(ids["failed"]).state == "failed", 30, "the failure")
            wait_until(lambda: journal.get_run(ids["completed"]).state == "completed", 30, "the completion")
            wait_until(lambda: journal.continued_to(ids["continued"]) is not None, 30, "the continuation")
            ids["successor"] = journal.continued_to(ids["continued"]) or ""
            wait_until(lambda: journal.get_run(ids["successor"]).state == "completed", 30, "the successor")
            wait_until(lambda: _has(engine, ids["flaky"], "activity_scheduled"), 30, "the flaky activity")
            ids["child"] = journal.history(ids["parent"])[-1].payload.get("run_id", "")
            wait_until(lambda: bool(ids["child"]) and _has(engine, ids["child"], "signal_wait"), 30, "the child")
        # With no worker left: one run never taken, one held by a worker that is gone.
        ids["pending"] = ops.quick.start({"label": "later"}).id
        ids["running"] = ops.quick.start({"label": "held"}).id
        assert journal.begin_step(ids["running"], "gone@nowhere:1", 600, 0) is not None
        yield Fleet(url, engine, ids)
    finally:
        engine.journal.close()
        drop_database(name)


def cli(fleet: Fleet | None, *args: str, app: Celery | None = None) -> Result:
    """Run the command as ``celery -A <app> continuum ...`` does (the fleet's engine app by default)."""
    app = app or (fleet.engine.app if fleet is not None else None)
    obj = CLIContext(app=app, no_color=True, workdir=None) if app is not None else None
    return CliRunner().invoke(main, list(args), obj=obj)


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ---- runs list ---------------------------------------------------------------------------------


def test_runs_list_shows_runs_in_every_state(fleet: Fleet) -> None:
    result = cli(fleet, "runs", "list", "--limit", "100")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["RUN", "WORKFLOW", "STATE", "AGE", "UPDATED", "NOTE"]
    states = {line.split()[0]: line.split()[2] for line in lines[1:-1]}
    expected = {
        "completed": "completed",
        "failed": "failed",
        "continued": "continued",
        "successor": "completed",
        "waiting": "suspended",
        "cancelled": "cancelled",
        "pending": "pending",
        "running": "running",
    }
    assert {key: states[fleet.ids[key]] for key in expected} == expected
    # Parked by the worker that lacked its version (suspended) or by the sweep before any claim (pending).
    stuck = next(line for line in lines if line.startswith(fleet.ids["stuck"])).split()
    assert stuck[2] in ("pending", "suspended") and "stuck: unknown_version" in " ".join(stuck)
    assert f"child of {fleet.ids['parent']}" in next(line for line in lines if line.startswith(fleet.ids["child"]))
    assert lines[-1] == f"runs 1-{len(lines) - 2}"


def test_runs_list_json_filters_and_pages(fleet: Fleet) -> None:
    everything = as_json(cli(fleet, "runs", "list", "--json", "--limit", "100"))
    assert everything["next_offset"] is None
    all_ids = [r["id"] for r in everything["runs"]]
    assert set(fleet.ids.values()) <= set(all_ids)
    assert {r["state"] for r in everything["runs"]} == {
        "pending",
        "running",
        "suspended",
        "completed",
        "failed",
        "cancelled",
        "continued",
    }

    failed = as_json(cli(fleet, "runs", "list", "--json", "--state", "failed"))["runs"]
    assert [r["id"] for r in failed] == [fleet.ids["failed"]]
    assert failed[0]["error"]["type"] == "ActivityFailed" and failed[0]["terminal"] is True
    waiters = as_json(cli(fleet, "runs", "list", "--json", "-w", "ops.waiter", "-s", "suspended"))["runs"]
    assert {r["id"] for r in waiters} == {fleet.ids["waiting"], fleet.ids["to_cancel"], fleet.ids["child"]}

    page2 = as_json(cli(fleet, "runs", "list", "--json", "--limit", "3", "--page", "2"))
    assert [r["id"] for r in page2["runs"]] == all_ids[3:6]
    assert (page2["offset"], page2["next_offset"]) == (3, 6)
    by_offset = as_json(cli(fleet, "runs", "list", "--json", "--limit", "3", "--offset", "3"))
    assert by_offset["runs"] == page2["runs"]
    human = cli(fleet, "runs", "list", "--limit", "3", "--page", "2")
    assert human.stdout.splitlines()[-1] == "runs 4-6; more with --page 3"


def test_runs_list_since_leaves_out_older_runs(fleet: Fleet) -> None:
    old = fleet.ids["completed"]
    fleet.sql("UPDATE continuum_runs SET created_at = now() - interval '3 hours' WHERE id = :r", r=old)
    try:
        recent = {
            r["id"] for r in as_json(cli(fleet, "runs", "list", "--json", "--since", "2h", "--limit", "100"))["runs"]
        }
        wider = {
            r["id"] for r in as_json(cli(fleet, "runs", "list", "--json", "--since", "3h30m", "--limit", "100"))["runs"]
        }
    finally:
        fleet.sql("UPDATE continuum_runs SET created_at = now() WHERE id = :r", r=old)
    assert old not in recent and fleet.ids["failed"] in recent
    assert old in wider


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--state", "bogus"], "'bogus' is not one of"),
        (["--since", "yesterday"], "is not an age"),
        (["--limit", "0"], "0 is not in the range"),
        (["--page", "2", "--offset", "5"], "give --page or --offset, not both"),
        (["--colour"], "No such option '--colour'"),
    ],
)
def test_runs_list_refuses_bad_arguments(fleet: Fleet, args: list[str], message: str) -> None:
    result = cli(fleet, "runs", "list", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


# ---- runs show ---------------------------------------------------------------------------------


def test_runs_show_prints_state_error_and_a_timeline(fleet: Fleet) -> None:
    result = cli(fleet, "runs", "show", fleet.ids["failed"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"run       {fleet.ids['failed']}" in out and "state     failed" in out
    assert "error     ActivityFailed: activity tests.support.flows_ops.refuse failed" in out
    timeline = [line.split()[4] for line in out.splitlines() if line.startswith("  ") and line.split()[0].isdigit()]
    assert timeline == ["run_started", "activity_scheduled", "activity_failed", "run_failed"]
    assert "refuse failed after 1 attempt(s): Refused: card declined [cmd 1]" in out


def test_runs_show_lineage_of_parent_child_and_continuation(fleet: Fleet) -> None:
    parent = cli(fleet, "runs", "show", fleet.ids["parent"]).stdout
    assert f"child          {fleet.ids['child']} (ops.waiter, suspended)" in parent
    child = cli(fleet, "runs", "show", fleet.ids["child"]).stdout
    assert f"parent         {fleet.ids['parent']} (ops.parent, suspended)" in child
    first = cli(fleet, "runs", "show", fleet.ids["continued"]).stdout
    assert f"continued to   {fleet.ids['successor']} (completed)" in first
    assert f"continued as new run {fleet.ids['successor']}" in first
    second = as_json(cli(fleet, "runs", "show", fleet.ids["successor"], "--json"))
    assert second["lineage"]["continued_from"]["id"] == fleet.ids["continued"]
    assert second["lineage"]["correlation_id"] == fleet.ids["continued"]
    assert second["run"]["result"] == 1
    assert [e["kind"] for e in second["history"]] == ["run_started", "run_completed"]
    assert second["history"][-1]["text"] == "completed: 1"


def test_runs_show_last_events_and_not_found(fleet: Fleet) -> None:
    tail = as_json(cli(fleet, "runs", "show", fleet.ids["completed"], "--json", "--last", "2"))
    assert [e["kind"] for e in tail["history"]] == ["activity_completed", "run_completed"]
    missing = cli(fleet, "runs", "show", "no-such-run")
    assert missing.exit_code == 1
    assert "no run with id 'no-such-run'" in missing.output and "Traceback" not in missing.output


# ---- signal, cancel, retry ---------------------------------------------------------------------


def _inbox(fleet: Fleet, run_id: str) -> list[Any]:
    return fleet.sql("SELECT name, payload FROM continuum_signals WHERE run_id = :r ORDER BY id", r=run_id)


def test_signal_stores_the_payload_and_refuses_bad_input(fleet: Fleet) -> None:
    run_id = fleet.ids["waiting"]
    bad_json = cli(fleet, "signal", run_id, "go", "{not json")
    assert bad_json.exit_code == 2 and "is not JSON" in bad_json.output
    bad_name = cli(fleet, "signal", run_id, "no spaces", "1")
    assert bad_name.exit_code == 2 and "signal name 'no spaces' is malformed" in bad_name.output
    assert _inbox(fleet, run_id) == []  # nothing written by the refused calls

    sent = as_json(cli(fleet, "signal", run_id, "go", '{"approved": true}', "--json"))
    assert sent == {
        "run_id": run_id,
        "signal": "go",
        "payload": {"approved": True},
        "delivered": True,
        "dispatched": True,
    }
    assert [(r.name, json.loads(r.payload)) for r in _inbox(fleet, run_id)] == [("go", {"approved": True})]

    finished = cli(fleet, "signal", fleet.ids["completed"], "go")
    assert finished.exit_code == 1 and "is completed; it cannot receive signal 'go'" in finished.output
    missing = cli(fleet, "signal", "nope", "go")
    assert missing.exit_code == 1 and "no run with id 'nope'" in missing.output


#: JSON ``[[[...]]]`` nested 10,000 deep: ``json.loads`` raises RecursionError on it.
DEEP_JSON = "[" * 10_000 + "]" * 10_000
#: A payload argument a shell passes from non-UTF-8 bytes, as Python decodes argv.
RAW_SURROGATE = os.fsdecode(b'"caf\xe9"')
TOO_LONG = "is not in the range"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["signal", "RUN", "go", DEEP_JSON], "is nested too deeply to parse; a payload may nest at most 200 levels"),
        (
            ["signal", "RUN", "go", '"caf\\udce9"'],
            "payload of signal 'go' holds the lone surrogate '\\udce9' at index 3",
        ),
        (
            ["signal", "RUN", "go", RAW_SURROGATE],
            "payload of signal 'go' holds the lone surrogate '\\udce9' at index 3",
        ),
        (["signal", "RUN", "go", '{"n": ' + "9" * 5000 + "}"], "holds an int of more than 4300 digits"),
        (["signal", "RUN", "go", '{"n": [' + "1" * 4301 + "]}"], "holds an int of more than 4300 digits"),
        (["runs", "list", "--since", "3000000d"], "'3000000d' reaches back before the year 1"),
        (["runs", "list", "--since", "9" * 40 + "s"], "reaches back before the year 1"),
        (["runs", "list", "--offset", "100000000000000000000"], f"{TOO_LONG} 0<=x<=9223372036854775807"),
        (["runs", "list", "--page", "9223372036854775807"], "page 9223372036854775807 of 50 runs starts past the last"),
        (["runs", "show", "RUN", "--last", "100000000000000000000"], TOO_LONG),
        (["doctor", "--limit", "100000000000000000000"], TOO_LONG),
        (["replay-check", "--limit", "100000000000000000000"], TOO_LONG),
    ],
    ids=[
        "deep-json",
        "escaped-surrogate",
        "raw-surrogate",
        "5000-digits",
        "4301-digits",
        "since-3000000d",
        "since-overflow",
        "offset-over-bigint",
        "page-over-bigint",
        "last-over-bigint",
        "doctor-limit",
        "replay-check-limit",
    ],
)
def test_values_beyond_what_json_or_the_database_take_are_bad_usage(
    fleet: Fleet, args: list[str], message: str
) -> None:
    run_id = fleet.ids["waiting"]

    def journal() -> list[Any]:
        runs = fleet.sql("SELECT id, state, last_seq, lease_token, updated_at FROM continuum_runs ORDER BY id")
        counts = fleet.sql("SELECT (SELECT count(*) FROM continuum_events), (SELECT count(*) FROM continuum_signals)")
        return [list(map(tuple, runs)), tuple(counts[0])]

    before = journal()
    result = cli(fleet, *[run_id if a == "RUN" else a for a in args])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # click's exit, not an escaped error
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output and len(errors[0]) < 400
    assert journal() == before


def test_the_largest_offset_the_database_takes_is_a_page_past_the_end(fleet: Fleet) -> None:
    result = cli(fleet, "runs", "list", "--offset", "9223372036854775807")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no runs past offset 9223372036854775807."
    long_ago = as_json(cli(fleet, "runs", "list", "--json", "--since", "700000d", "--limit", "1000"))
    assert {r["id"] for r in long_ago["runs"]} >= set(fleet.ids.values())


def test_a_shell_payload_the_journal_cannot_store_exits_2_without_a_traceback(fleet: Fleet) -> None:
    """The installed ``continuum`` command, given argv bytes that are not UTF-8, and JSON too deep to parse."""
    command = [Path(sys.executable).with_name("continuum"), "--database-url", fleet.url, "signal", fleet.ids["waiting"]]
    inbox = _inbox(fleet, fleet.ids["waiting"])
    for payload, message in ((b'"caf\xe9"', b"lone surrogate '\\udce9'"), (DEEP_JSON.encode(), b"nested too deeply")):
        done = subprocess.run([*map(os.fsencode, command), b"go", payload], capture_output=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count(b"Error:") == 1 and message in done.stderr, done.stderr
        assert b"Traceback" not in done.stderr
    assert _inbox(fleet, fleet.ids["waiting"]) == inbox


def test_signal_with_the_broker_down_is_stored_and_says_the_sweep_will_send_it(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This engine exists for this test only: keep it out of the process-wide registry afterwards.
    monkeypatch.setattr(runtime, "_engines", dict(runtime._engines))
    monkeypatch.setattr(runtime, "_current", runtime._current)
    down = Celery("down", broker="redis://127.0.0.1:1/0")
    Continuum(down, database_url=fleet.url, name=f"down-{uuid.uuid4().hex[:6]}")
    result = cli(fleet, "signal", fleet.ids["child"], "go", "7", app=down)
    assert result.exit_code == 0, result.output
    assert "warning: cannot reach the broker redis://127.0.0.1:1/0" in result.output
    assert "the beat sweep dispatches it" in result.output and "Traceback" not in result.output
    assert [r.name for r in _inbox(fleet, fleet.ids["child"])] == ["go"]


def test_cancel_requests_once_and_refuses_finished_runs(fleet: Fleet) -> None:
    run_id = fleet.ids["to_cancel"]
    first = cli(fleet, "cancel", run_id)
    assert first.exit_code == 0, first.output
    assert f"cancel requested for run {run_id} (ops.waiter); it stops at its next step." in first.stdout
    assert fleet.sql("SELECT cancel_requested_at FROM continuum_runs WHERE id = :r", r=run_id)[0][0] is not None
    again = cli(fleet, "cancel", run_id)
    assert again.exit_code == 0 and "(it was already requested)" in again.stdout
    done = cli(fleet, "cancel", fleet.ids["cancelled"], "--json")
    assert as_json(done) == {"run_id": fleet.ids["cancelled"], "cancel_requested": True, "state": "cancelled"}
    finished = cli(fleet, "cancel", fleet.ids["failed"])
    assert finished.exit_code == 1 and "is failed; it cannot be cancelled" in finished.output


def test_retry_unparks_a_stuck_run_with_an_audit_event(fleet: Fleet) -> None:
    run_id = fleet.ids["stuck"]
    before = fleet.sql("SELECT state FROM continuum_runs WHERE id = :r", r=run_id)[0].state
    result = as_json(cli(fleet, "retry", run_id, "--by", "dana", "--json"))
    assert result == {"run_id": run_id, "by": "dana", "cleared": "unknown_version", "activities": []}
    row = fleet.sql("SELECT stuck_reason, state FROM continuum_runs WHERE id = :r", r=run_id)[0]
    assert tuple(row) == (None, before)  # unparked; the state itself is left to the next step
    [audit] = fleet.sql("SELECT payload FROM continuum_events WHERE run_id = :r AND kind = 'retry_requested'", r=run_id)
    assert json.loads(audit.payload)["by"] == "dana"
    shown = cli(fleet, "runs", "show", run_id, "--last", "1").stdout
    assert "retry requested by dana (cleared stuck: unknown_version)" in shown


def test_retry_never_changes_a_finished_or_held_run(fleet: Fleet) -> None:
    before = fleet.sql("SELECT last_seq, state FROM continuum_runs WHERE id = :r", r=fleet.ids["failed"])
    failed = cli(fleet, "retry", fleet.ids["failed"])
    assert failed.exit_code == 1
    assert "is failed; a finished run never changes state" in failed.output
    assert "start a new run with the same input" in failed.output
    assert fleet.sql("SELECT last_seq, state FROM continuum_runs WHERE id = :r", r=fleet.ids["failed"]) == before
    held = cli(fleet, "retry", fleet.ids["running"])
    assert held.exit_code == 1 and "lease held by gone@nowhere:1" in held.output


# ---- doctor, migrate, configuration ------------------------------------------------------------


def test_doctor_on_the_fleet(fleet: Fleet) -> None:
    result = cli(fleet, "doctor", "--json")
    assert result.exit_code == 1  # the held run's worker is gone
    found = {d["run_id"]: d for d in json.loads(result.stdout)["runs"]}
    assert fleet.ids["completed"] not in found and fleet.ids["failed"] not in found
    runnable, version = found[fleet.ids["pending"]]["reasons"]
    assert runnable["kind"] == "runnable" and "waiting for a worker to take a step" in runnable["message"]
    # No worker is left at all: nothing serves the run's version.
    assert version["kind"] == "version" and version["attention"]
    assert "no worker answered the ping, so none has ops.quick" in version["message"]
    [lease] = found[fleet.ids["running"]]["reasons"]
    assert (lease["kind"], lease["details"]["owner_status"], lease["attention"]) == ("lease", "dead", True)
    assert [r["kind"] for r in found[fleet.ids["parent"]]["reasons"]] == ["version", "child"]
    finished = as_json(cli(fleet, "doctor", fleet.ids["completed"], "--json"))
    assert finished["runs"][0]["reasons"][0]["kind"] == "finished"


def test_migrate_creates_the_tables_and_is_idempotent(run_token: str) -> None:
    name = f"continuum_mig_{run_token}"
    url = create_database(name)
    try:
        unmigrated = cli(None, "--database-url", url, "runs", "list")
        assert unmigrated.exit_code == 3
        assert "has no continuum tables: run `continuum migrate`" in unmigrated.output
        for _ in range(2):
            result = cli(None, "--database-url", url, "migrate")
            assert result.exit_code == 0, result.output
            assert result.stdout.strip() == f"journal at revision {head_revision()}"
        assert cli(None, "--database-url", url, "runs", "list").stdout.strip() == "no runs match."
    finally:
        drop_database(name)


def test_unreachable_database_is_a_message_and_exit_3() -> None:
    result = cli(None, "--database-url", "postgresql://postgres@127.0.0.1:1/nothing", "runs", "list")
    assert result.exit_code == 3
    assert "cannot reach the journal database" in result.output and "Traceback" not in result.output


def test_a_database_url_sqlalchemy_cannot_use_is_a_message_and_exit_3() -> None:
    result = cli(None, "--database-url", "nosuchdialect://somewhere/db", "runs", "list")
    assert result.exit_code == 3, result.output
    assert "is not usable" in result.output and "Traceback" not in result.output


def test_the_apps_settings_win_over_the_environment(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTINUUM_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/elsewhere")
    listed = as_json(cli(fleet, "runs", "list", "--json", "--state", "failed"))
    assert [r["id"] for r in listed["runs"]] == [fleet.ids["failed"]]


def test_celery_entry_point_runs_the_same_commands_with_the_apps_settings(fleet: Fleet) -> None:
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
        CONTINUUM_TEST_BROKER_PREFIX=f"ctest:cli-{uuid.uuid4().hex[:6]}:",
        CONTINUUM_DATABASE_URL=fleet.url,
        CONTINUUM_KEY_PREFIX="ctest:cli:",
        CONTINUUM_TEST_MODULES="tests.support.flows_ops",
    )
    celery = [sys.executable, "-m", "celery", "-A", "tests.support.app", "continuum"]
    listed = subprocess.run(
        [*celery, "runs", "list", "--json", "--state", "failed"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)["runs"]] == [fleet.ids["failed"]]
    missing = subprocess.run(
        [*celery, "runs", "show", "nope"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 1 and "no run with id 'nope'" in missing.stderr


def test_demo_runs_the_examples_to_their_expected_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTINUUM_DATABASE_URL", raising=False)
    monkeypatch.delenv("CONTINUUM_REDIS_URL", raising=False)
    result = cli(None, "demo", "--database-url", f"sqlite:///{tmp_path / 'demo.sqlite3'}")
    assert result.exit_code == 0, result.output
    assert "all runs ended as expected" in result.stdout


def test_demo_removes_its_temporary_journal_unless_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTINUUM_DATABASE_URL", raising=False)
    monkeypatch.delenv("CONTINUUM_REDIS_URL", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    removed = cli(None, "demo")
    assert removed.exit_code == 0, removed.output
    assert list(tmp_path.iterdir()) == [] and "`continuum demo --keep` keeps it" in removed.stdout
    kept = cli(None, "demo", "--keep")
    assert kept.exit_code == 0, kept.output
    [workdir] = tmp_path.iterdir()
    assert f"--database-url sqlite:///{workdir / 'journal.sqlite3'} runs list" in kept.stdout
    assert cli(None, "--database-url", f"sqlite:///{workdir / 'journal.sqlite3'}", "runs", "list").exit_code == 0


# ---- only `migrate` creates a journal; read-only commands never write one -----------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("runs", "list"),
        ("runs", "show", "some-run"),
        ("doctor",),
        ("versions",),
        ("versions", "prune"),
        ("signal", "some-run", "go"),
        ("cancel", "some-run"),
        ("retry", "some-run"),
    ],
    ids=" ".join,
)
def test_commands_other_than_migrate_never_create_a_journal(
    args: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CONTINUUM_DATABASE_URL", "CONTINUUM_APP", "CONTINUUM_CELERY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # nothing configured: the default is ./continuum.sqlite3
    result = cli(None, *args)
    assert result.exit_code == 3, result.output
    assert f"no SQLite journal at '{tmp_path / 'continuum.sqlite3'}'" in result.output
    assert all(hint in result.output for hint in ("created none", "--database-url", "continuum migrate"))
    missing = tmp_path / "elsewhere.sqlite3"
    named = cli(None, "--database-url", f"sqlite:///{missing}", *args)
    assert named.exit_code == 3 and "no SQLite journal" in named.output
    assert list(tmp_path.iterdir()) == [], "nothing may be created"


def test_read_only_commands_read_through_a_connection_that_refuses_writes(fleet: Fleet) -> None:
    op = Operator(database_url=fleet.url)
    try:
        assert op.reader.get_run(fleet.ids["completed"]).state == "completed"
        with pytest.raises(JournalError, match="read-only transaction"):
            op.reader.create_run(NewRun(f"ro-{uuid.uuid4().hex[:6]}", "ops.quick", "0" * 16, 1, {}))
    finally:
        op.close()
