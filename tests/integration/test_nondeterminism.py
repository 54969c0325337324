"""A deploy that cuts a workflow short, on real worker processes: the run is parked, not completed.

Deploy 1 records activity, signal wait, activity, signal wait. Deploy 2 edits the body in
place (declared ``compatible_with`` the old hash, so it serves the old run) to return after
the first activity. Replaying the old history with it used to complete the run with the new
result; the recorded commands the new body never reissued are nondeterminism.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from continuum_celery.cli import main as cli
from tests.support.stack import ROOT, Stack, wait_until

ACTIVITIES = """
from continuum_celery import activity


@activity(name="{wf}.double")
def double(x):
    return 2 * x
"""

DEPLOY_1 = """
from continuum_celery import workflow
from {acts} import double


@workflow(workflow="{wf}.approve")
def approve(ctx, order):
    doubled = ctx.run(double, order["n"])
    extra = ctx.wait_signal("go")
    audited = ctx.run(double, doubled + extra)
    return {{"doubled": doubled, "audited": audited, "done": ctx.wait_signal("finish")}}
"""

# The edit: the approval is gone, and the body claims the old runs.
DEPLOY_2 = """
from continuum_celery import workflow
from {acts} import double


@workflow(workflow="{wf}.approve", compatible_with=("{old}",))
def approve(ctx, order):
    return {{"doubled": ctx.run(double, order["n"])}}
"""


class Deploys:
    """Workflow modules written to a directory the test process and its workers import from."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.tag = tmp, uuid.uuid4().hex[:8]
        self.wf = f"tests.cut{self.tag}"

    def write(self, module: str, template: str, **extra: str) -> str:
        name = f"{module}_{self.tag}"
        source = template.format(wf=self.wf, acts=f"cut_acts_{self.tag}", **extra)
        (self.tmp / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    def worker_env(self, *modules: str) -> dict[str, str]:
        return {"PYTHONPATH": os.pathsep.join([str(self.tmp), str(ROOT)]), "CONTINUUM_TEST_MODULES": ",".join(modules)}


@pytest.fixture
def deploys(tmp_path: Path) -> Iterator[Deploys]:
    made = Deploys(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        yield made
    finally:
        sys.path.remove(str(tmp_path))


def _history(handle: Any) -> list[tuple[int, str, int | None, str | None]]:
    return [(e.seq, e.kind.value, e.command_id, e.name) for e in handle.history()]


def test_a_body_cut_short_by_a_deploy_parks_its_old_run_as_nondeterministic(stack: Stack, deploys: Deploys) -> None:
    acts = deploys.write("cut_acts", ACTIVITIES)
    first = deploys.write("cut_v1", DEPLOY_1)
    stack.modules = (acts, first)
    stack.client()
    old_body = importlib.import_module(first).approve
    second = deploys.write("cut_v2", DEPLOY_2, old=old_body.version_hash)

    worker_1 = stack.worker("deploy-1", **deploys.worker_env(acts, first))
    handle = old_body.start({"n": 2})
    wait_until(lambda: "signal_wait" in [k for _, k, _, _ in _history(handle)], 30, "the wait for 'go'")
    handle.signal("go", 1)
    wait_until(lambda: [h[3] for h in _history(handle)][-1:] == ["finish"], 30, "the wait for 'finish'")
    wait_until(lambda: handle.status() == "suspended", 30, "the run to suspend")
    worker_1.stop()
    recorded = _history(handle)
    assert [k for _, k, _, _ in recorded] == [
        "run_started",
        "activity_scheduled",
        "activity_completed",
        "signal_wait",
        "signal_received",
        "activity_scheduled",
        "activity_completed",
        "signal_wait",
    ]

    worker_2 = stack.worker("deploy-2", **deploys.worker_env(acts, second))
    handle.signal("finish", "ok")
    wait_until(lambda: handle.record().stuck_reason == "nondeterminism", 60, "deploy 2 to park the run")
    record = handle.record()
    assert (record.state, record.result, record.error) == ("suspended", None, None)
    after = _history(handle)
    assert after[: len(recorded)] == recorded, "nothing journaled was changed"
    assert after[len(recorded) :] == [(9, "signal_received", 4, "finish")], "only the signal was added"
    expected = (
        f"run {handle.id}: at event 4 the history holds signal_wait 'go' (command 2) and 2 more recorded "
        "command(s) but the code asked for nothing more (the body returned)"
    )
    wait_until(lambda: expected in worker_2.output(), 30, f"the worker to log {expected!r}")
    assert "run_completed" not in worker_2.output()
    worker_2.stop()

    # The fix is to serve the run with the code it recorded: nothing was lost meanwhile.
    stack.worker("deploy-1-again", **deploys.worker_env(acts, first))
    retried = CliRunner().invoke(cli, ["--database-url", stack.database_url, "retry", handle.id, "--by", "ops"])
    assert retried.exit_code == 0, retried.output
    assert handle.result(timeout=60) == {"doubled": 4, "audited": 10, "done": "ok"}
    kinds = [k for _, k, _, _ in _history(handle)]
    assert kinds[len(recorded) :] == ["signal_received", "retry_requested", "run_completed"]
