"""The bundled app (``celery -A continuum_celery worker``) finds its configuration as Celery users expect.

Workers are real ``celery`` processes started in a directory of their own, with no checkout on
``PYTHONPATH``: the project's ``celeryconfig.py`` there is loaded (and its ``imports`` found in
that directory), else the packaged defaults; ``-Q`` that leaves continuum's queue out is logged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from continuum_celery.app import find_config
from continuum_celery.errors import ConfigurationError
from continuum_celery.journal.schema import migrate
from tests.support.stack import wait_until

BIN = Path(sys.executable).parent

SHOP = '''
from continuum_celery import activity, workflow


@activity
def price(item: str) -> int:
    return len(item) * 100


@workflow(workflow="shop.checkout", version=3)
def checkout(ctx, items: list) -> dict:
    return {"total": sum(ctx.gather([ctx.start_activity(price, i) for i in items]))}
'''

CONFIG = """
import os

broker_url = os.environ["CELERY_BROKER_URL"]
imports = ("shop",)
task_acks_late = True
worker_prefetch_multiplier = 1
continuum_database_url = os.environ["SHOP_DATABASE"]
continuum_redis_url = os.environ["SHOP_REDIS"]
continuum_queue = os.environ["SHOP_QUEUE"]
"""


@pytest.fixture
def project(tmp_path: Path, fresh_pg_url: str, redis_url: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """A project directory and the environment of its processes: nothing of the checkout on sys.path."""
    token = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTINUUM_", "CELERY_"))}
    env.pop("PYTHONPATH", None)
    env.update(CELERY_BROKER_URL=redis_url, CONTINUUM_KEY_PREFIX=f"ctest:{token}:continuum:")
    env.update(SHOP_DATABASE=fresh_pg_url, SHOP_REDIS=redis_url, SHOP_QUEUE=f"ctest-{token}")
    migrate(fresh_pg_url)
    yield tmp_path, env
    client = redis.Redis.from_url(redis_url)
    for key in [*client.scan_iter(match=f"ctest:{token}:*"), *client.scan_iter(match=f"*ctest-{token}*")]:
        client.delete(key)
    client.close()


def _worker(cwd: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = cwd / f"worker-{uuid.uuid4().hex[:6]}.log"
    command = [str(BIN / "celery"), "-A", "continuum_celery", "worker", "-l", "INFO", "-c", "1", *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(lambda: "ready." in log.read_text() or proc.poll() is not None, 60, "the worker to boot")
    assert proc.poll() is None, log.read_text()
    return proc, log


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_celeryconfig_of_the_current_directory_configures_workers_and_clients(
    project: tuple[Path, dict[str, str]],
) -> None:
    cwd, env = project
    (cwd / "celeryconfig.py").write_text(CONFIG)
    (cwd / "shop.py").write_text(SHOP)
    worker, log = _worker(cwd, env)
    try:
        boot = log.read_text()
        assert f"the bundled app's configuration is celeryconfig from {cwd / 'celeryconfig.py'}" in boot
        assert "workflows registered: shop.checkout v3" in boot and "orders.order_flow" not in boot
        assert f"consuming {env['SHOP_QUEUE']!r}" in boot  # the custom queue, with no -Q
        client = "import json, shop; print(json.dumps(shop.checkout.start(['ab', 'cde']).result(timeout=60)))"
        done = subprocess.run(
            [str(BIN / "python"), "-c", client], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr + log.read_text()[-3000:]
        assert json.loads(done.stdout) == {"total": 500}
    finally:
        _stop(worker)


def test_a_worker_whose_q_leaves_out_continuums_queue_says_what_it_will_not_consume(
    project: tuple[Path, dict[str, str]],
) -> None:
    cwd, env = project  # no celeryconfig.py here: the packaged defaults, with the examples
    env = {**env, "CONTINUUM_QUEUE": env["SHOP_QUEUE"], "CONTINUUM_DATABASE_URL": env["SHOP_DATABASE"]}
    queue = env["CONTINUUM_QUEUE"]
    worker, log = _worker(cwd, env, "-Q", f"{queue}-payments")
    try:
        boot = log.read_text()
        assert "configuration is continuum_celery.celeryconfig (the packaged defaults)" in boot
        assert "workflows registered: approvals.approval_flow v1" in boot
        assert f"it will not consume {queue!r}, continuum's queue, nor any version queue '{queue}.v.*'" in boot
        assert f".> {queue} " not in boot and f".> {queue}-payments " in boot  # the banner's queue list
    finally:
        _stop(worker)


def test_a_configuration_module_named_but_missing_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONTINUUM_CELERY_CONFIG", "no_such_settings")
    with pytest.raises(ConfigurationError, match="cannot import the Celery configuration module 'no_such_settings'"):
        find_config()
    monkeypatch.delenv("CONTINUUM_CELERY_CONFIG")
    (tmp_path / "celeryconfig.py").write_text("import no_such_dependency\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency"):  # a broken project config is not skipped
        find_config()
    sys.modules.pop("celeryconfig", None)
