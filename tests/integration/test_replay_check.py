"""``continuum replay-check`` and ``assert_replays`` against histories in a real PostgreSQL database.

An embedded engine (in a subprocess, with the original code) leaves one finished
and one waiting run per workflow. The test process then imports an edited body
of that workflow, as a new deploy would, and checks the stored histories
against it: an edit guarded by ``ctx.patched`` passes, an unguarded one fails.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from continuum_celery.cli import main as cli
from continuum_celery.journal.sql_engine import read_only_engine
from continuum_celery.replay_check import check_histories, export_history, read_histories
from continuum_celery.testing import assert_replays
from continuum_celery.versioning import Registry
from tests.conftest import create_database, drop_database
from tests.support.stack import ROOT

ACTIVITIES = """
from continuum_celery import activity


@activity(name="{wf}.double")
def double(x):
    return 2 * x


@activity(name="{wf}.audit")
def audit(x):
    return x
"""

# The original deploy: two workflows with one body (each test edits one of them).
ORIGINAL = """
from continuum_celery import workflow
from {acts} import double
""" + "".join(
    f"""

@workflow(workflow="{{wf}}.{name}")
def {name}(ctx, order):
    doubled = ctx.run(double, order["n"])
    if order.get("wait"):
        ctx.wait_signal("go")
    return {{{{"doubled": doubled}}}}
"""
    for name in ("good", "bad")
)

PRODUCE = """
import json, sys
from continuum_celery.embedded import embedded_engine, running_worker
from tests.support.stack import wait_until

engine = embedded_engine(sys.argv[1], name="replay-check-producer")
import {orig} as flows

with running_worker(engine):
    for wf in (flows.good, flows.bad):
        wf.start({{"n": 2}}).result(timeout=60)
        waiting = wf.start({{"n": 3, "wait": True}})
        wait_until(lambda: any(e.kind.value == "signal_wait" for e in waiting.history()), 60, "a signal wait")
print(json.dumps({{"hash": flows.good.version_hash}}))
"""

# An in-place edit guarded by patched(): old histories keep the old branch.
COMPATIBLE = """
from continuum_celery import workflow
from {acts} import audit, double


@workflow(workflow="{wf}.good", compatible_with=("{old}",))
def good(ctx, order):
    doubled = ctx.run(double, order["n"])
    if ctx.patched("audit"):
        ctx.run(audit, doubled)
    if order.get("wait"):
        ctx.wait_signal("go")
    return {{"doubled": doubled}}
"""

# The same edit without the guard: every stored history diverges.
INCOMPATIBLE = """
from continuum_celery import workflow
from {acts} import audit, double


@workflow(workflow="{wf}.bad", compatible_with=("{old}",))
def bad(ctx, order):
    doubled = ctx.run(double, order["n"])
    ctx.run(audit, doubled)
    if order.get("wait"):
        ctx.wait_signal("go")
    return {{"doubled": doubled}}
"""


@dataclass
class Stored:
    """A database holding runs made by the original code, and where edited modules go."""

    url: str
    tmp: Path
    tag: str
    old_hash: str

    @property
    def wf(self) -> str:
        return f"tests.rc{self.tag}"

    def write(self, module: str, template: str) -> str:
        name = f"{module}_{self.tag}"
        source = template.format(wf=self.wf, acts=f"rc_acts_{self.tag}", orig=f"rc_orig_{self.tag}", old=self.old_hash)
        (self.tmp / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    def load(self, module: str, template: str) -> Any:
        """Import an edited module, as the new deploy's code."""
        name = self.write(module, template)
        if str(self.tmp) not in sys.path:
            sys.path.insert(0, str(self.tmp))
        return importlib.import_module(name)

    def fingerprint(self) -> list[Any]:
        """Everything a replay could have changed, to compare before and after a check."""
        engine = sa.create_engine(self.url, poolclass=sa.NullPool)
        with engine.connect() as conn:
            runs = conn.execute(
                sa.text(
                    "SELECT id, state, last_seq, lease_token, stuck_reason, updated_at FROM continuum_runs ORDER BY id"
                )
            ).all()
            events = conn.execute(sa.text("SELECT count(*), max(created_at) FROM continuum_events")).one()
        engine.dispose()
        return [list(map(tuple, runs)), tuple(events)]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, run_token: str) -> Iterator[Stored]:
    name = f"continuum_rc_{run_token}_{uuid.uuid4().hex[:6]}"
    url = create_database(name)
    tmp = tmp_path_factory.mktemp("replay_check")
    data = Stored(url, tmp, uuid.uuid4().hex[:8], "")
    data.write("rc_acts", ACTIVITIES)
    data.write("rc_orig", ORIGINAL)
    script = data.write("rc_produce", PRODUCE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, str(tmp / f"{script}.py"), url], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    data.old_hash = json.loads(done.stdout.strip().splitlines()[-1])["hash"]
    try:
        yield data
    finally:
        sys.path[:] = [p for p in sys.path if p != str(tmp)]
        drop_database(name)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def test_replay_check_flags_a_history_made_incompatible_by_a_code_change(stored: Stored) -> None:
    edited = stored.load("rc_bad", INCOMPATIBLE)
    assert edited.bad.version_hash != stored.old_hash
    before = stored.fingerprint()

    result = invoke("replay-check", "--database-url", stored.url, "--workflow", f"{stored.wf}.bad", "--json")

    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert (report["ok"], report["checked"], report["failed"]) == (False, 2, 2)
    finished, waiting = (
        next(r["problem"] for r in report["runs"] if marker in r["problem"])
        for marker in ("the history ended with run_completed", "the history holds signal_wait 'go'")
    )
    assert f"but the code goes on and issues activity_scheduled '{stored.wf}.audit'" in finished
    assert f"the code asked for activity_scheduled '{stored.wf}.audit'" in waiting
    assert {r["version_hash"] for r in report["runs"]} == {stored.old_hash}
    assert stored.fingerprint() == before, "replay-check must write nothing"

    text = invoke("replay-check", "--database-url", stored.url, "--workflow", f"{stored.wf}.bad")
    assert text.exit_code == 1
    assert text.output.count("FAILED ") == 2
    assert "2 run(s) checked: 0 reproduced, 2 failed, 0 skipped" in text.output


def test_replay_check_passes_a_compatible_patched_edit(stored: Stored) -> None:
    edited = stored.load("rc_good", COMPATIBLE)
    assert edited.good.version_hash != stored.old_hash
    before = stored.fingerprint()

    result = invoke("replay-check", "--database-url", stored.url, "--workflow", f"{stored.wf}.good")

    assert result.exit_code == 0, result.output
    assert "2 run(s) checked: 2 reproduced, 0 failed, 0 skipped" in result.output
    assert stored.fingerprint() == before


def test_exported_histories_replay_from_a_file_and_in_pytest(stored: Stored, tmp_path: Path) -> None:
    stored.load("rc_good", COMPATIBLE)
    path = tmp_path / "histories.json"
    assert export_history(stored.url, path, workflow=f"{stored.wf}.good") == 2

    result = invoke("replay-check", "--from-file", str(path), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["checked"] == 2

    assert len(assert_replays(path).verdicts) == 2
    assert len(assert_replays(stored.url, workflow=f"{stored.wf}.good").verdicts) == 2
    with pytest.raises(AssertionError, match=r"0 reproduced, 1 failed, 1 skipped"):
        assert_replays(path, registry=Registry())  # code without the workflow at all


def test_a_run_pinned_to_a_version_the_code_dropped_fails_unless_it_finished(stored: Stored) -> None:
    histories = read_histories(stored.url, workflow=f"{stored.wf}.good")
    verdicts = {
        h.run["state"]: v for h, v in zip(histories, check_histories(histories, Registry()).verdicts, strict=True)
    }
    assert verdicts["completed"].status == "skipped"
    assert verdicts["suspended"].status == "failed"
    assert "would never resume" in verdicts["suspended"].problem


def test_the_check_connection_cannot_write(stored: Stored) -> None:
    engine = read_only_engine(stored.url)
    try:
        with pytest.raises(sa.exc.DBAPIError, match="read-only"), engine.begin() as conn:
            conn.execute(sa.text("UPDATE continuum_runs SET stuck_reason = 'x'"))
    finally:
        engine.dispose()


def test_bad_input_is_refused_with_the_fix(stored: Stored, tmp_path: Path) -> None:
    both = invoke("replay-check", "--database-url", stored.url, "--from-file", __file__)
    assert both.exit_code == 2
    assert "either --database-url or --from-file" in both.output

    junk = tmp_path / "junk.json"
    junk.write_text('{"run": 1}')
    bad_file = invoke("replay-check", "--from-file", str(junk))
    assert bad_file.exit_code == 2
    assert "not a list of" in bad_file.output and "export_history" in bad_file.output

    junk.write_text('[{"run": {"id": "r"}, "events": []}]')
    missing = invoke("replay-check", "--from-file", str(junk))
    assert missing.exit_code == 2
    assert "lacks run fields ['workflow', 'version_hash', 'state']" in missing.output

    unknown_module = invoke("replay-check", "--from-file", str(junk), "-m", "no_such_module_xyz")
    assert unknown_module.exit_code == 2
    assert "cannot import --module 'no_such_module_xyz'" in unknown_module.output
