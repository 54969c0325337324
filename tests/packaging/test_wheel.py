"""The wheel as a user gets it: built from the sources, installed (not editable) into a fresh venv,
and used from a directory that holds no checkout: migrate, demo, and a real worker of the bundled app.

pip installs the dependencies from its usual index and cache; the test takes a few tens of seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from continuum_celery.journal.schema import head_revision
from tests.support.stack import ROOT, wait_until

pytestmark = pytest.mark.slow

#: What a wheel is built from; anything else in the checkout (tests, bench, .venv) must not matter.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "continuum_celery")

#: Runs the three examples end to end from the installed package (a client process of the bundled app).
DRIVER = """
import json, time
import continuum_celery
from continuum_celery.examples.approvals import approval_flow
from continuum_celery.examples.fanout import catalogue_flow
from continuum_celery.examples.orders import order_flow

order = order_flow.start({"id": "W-1", "items": ["mug"], "cents": 500, "address": "1 Main St"})
fanout = catalogue_flow.start({"title": "T", "images": ["a.png", "b.png", "c.png"]})
approval = approval_flow.start({"id": "R-1", "approver": "dana", "grace_seconds": 1, "timeout_seconds": 600})
deadline = time.monotonic() + 90
while not any(e.kind.value == "signal_wait" for e in approval.history()):
    if time.monotonic() > deadline:
        raise SystemExit("the approval never waited for its signal")
    time.sleep(0.1)
approval.signal("decision", {"approved": True, "by": "dana"})
results = {name: h.result(timeout=90) for name, h in (("order", order), ("fanout", fanout), ("approval", approval))}
print(json.dumps({"package": continuum_celery.__file__, "results": results}))
"""


@dataclass
class Installed:
    wheel: Path
    venv: Path
    elsewhere: Path  # an empty working directory, far from the checkout

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTINUUM_", "CELERY_"))}
        env.pop("PYTHONPATH", None)
        env["TMPDIR"] = str(self.elsewhere / "tmp")
        env.update(extra)
        return env

    def run(self, *args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), cwd=self.elsewhere, env=self.env(**env), capture_output=True, text=True, timeout=timeout
        )


def _run(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """The wheel built from a copy of the sources, installed with its dependencies into a fresh venv."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, src / name)
    dist = base / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(src), cwd=base)
    [wheel] = dist.glob("continuum_celery-*.whl")
    venv = base / "venv"
    _run(sys.executable, "-m", "venv", str(venv), cwd=base)
    _run(str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel), cwd=base)
    elsewhere = base / "elsewhere"
    (elsewhere / "tmp").mkdir(parents=True)
    yield Installed(wheel, venv, elsewhere)


def test_the_wheel_holds_the_package_its_migrations_and_its_metadata(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = wheel.read(info).decode()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"continuum_celery"}, tops  # no `workflows`, no tests
    versions = [n for n in names if n.startswith("continuum_celery/migrations/versions/") and n.endswith(".py")]
    assert any(f"/{head_revision()}_" in n for n in versions), versions
    assert "continuum_celery/migrations/env.py" in names and "continuum_celery/migrations/script.py.mako" in names
    assert "continuum_celery/celeryconfig.py" in names and "continuum_celery/examples/orders.py" in names
    assert "continuum_celery/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata
    assert "Classifier: Programming Language :: Python :: 3.11" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert requires and all("<" in line for line in requires), requires  # every runtime dependency has a ceiling


def test_the_installed_package_migrates_runs_the_demo_and_cleans_up(installed: Installed, fresh_pg_url: str) -> None:
    where = installed.run(installed.bin("python"), "-c", "import continuum_celery; print(continuum_celery.__file__)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(installed.venv)), where.stdout  # not the checkout

    migrated = installed.run(installed.bin("continuum"), "--database-url", fresh_pg_url, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == f"journal at revision {head_revision()}"

    demo = installed.run(installed.bin("continuum"), "demo")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "all runs ended as expected" in demo.stdout
    assert list((installed.elsewhere / "tmp").iterdir()) == [], "the demo removes its temporary directory"
    assert not (installed.elsewhere / "continuum.sqlite3").exists()

    kept = installed.run(installed.bin("continuum"), "demo", "--keep")
    assert kept.returncode == 0, kept.stdout + kept.stderr
    [workdir] = (installed.elsewhere / "tmp").iterdir()
    assert f"sqlite:///{workdir}/journal.sqlite3" in kept.stdout and (workdir / "journal.sqlite3").exists()
    shutil.rmtree(workdir)


def test_a_worker_of_the_installed_bundled_app_runs_the_examples(
    installed: Installed, fresh_pg_url: str, redis_url: str
) -> None:
    """Only environment variables, a custom continuum queue, and a plain ``worker -B`` (no -Q)."""
    token = uuid.uuid4().hex[:8]
    env = {
        "CELERY_BROKER_URL": redis_url,
        "CONTINUUM_DATABASE_URL": fresh_pg_url,
        "CONTINUUM_REDIS_URL": redis_url,
        "CONTINUUM_KEY_PREFIX": f"ctest:{token}:continuum:",
        "CONTINUUM_QUEUE": f"ctest-{token}",
    }
    migrated = installed.run(installed.bin("continuum"), "migrate", **env)
    assert migrated.returncode == 0, migrated.stderr
    log = installed.elsewhere / f"worker-{token}.log"
    args = [installed.bin("celery"), "-A", "continuum_celery", "worker", "-B", "-l", "INFO", "-c", "2"]
    args += ["-n", f"wheel-{token}@%h", "-s", str(installed.elsewhere / f"beat-{token}")]
    with log.open("wb") as out:
        worker = subprocess.Popen(
            args, cwd=installed.elsewhere, env=installed.env(**env), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: "ready." in log.read_text() or worker.poll() is not None, 60, "the worker to boot")
        boot = log.read_text()
        assert worker.poll() is None, boot
        assert "the bundled app's configuration is continuum_celery.celeryconfig (the packaged defaults)" in boot
        assert str(installed.venv) in boot.split("the packaged defaults) from ", 1)[1].splitlines()[0]
        assert "workflows registered: approvals.approval_flow v1" in boot and "orders.order_flow v1" in boot
        assert f"consuming 'ctest-{token}'" in boot and "task events: ON" in boot

        driven = installed.run(installed.bin("python"), "-c", DRIVER, timeout=240, **env)
        assert driven.returncode == 0, driven.stderr + log.read_text()[-3000:]
        report = json.loads(driven.stdout.strip().splitlines()[-1])
        assert report["package"].startswith(str(installed.venv))
        results = report["results"]
        assert results["order"]["tracking"] == "trk-W-1"
        assert results["fanout"]["page"] == {"tiles": 3, "title": "T"}
        assert results["approval"] == {"request": "R-1", "approved": True, "by": "dana"}
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=30)
        client = redis.Redis.from_url(redis_url)
        for key in [*client.scan_iter(match=f"ctest:{token}:*"), *client.scan_iter(match=f"*ctest-{token}*")]:
            client.delete(key)
        client.close()
