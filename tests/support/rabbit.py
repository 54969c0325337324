"""RabbitMQ for the tests: a virtual host per test, and its queues read through ``rabbitmqctl``.

The broker is RabbitMQ on 127.0.0.1:5672 (guest/guest, env ``CONTINUUM_TEST_AMQP``). Each
test that runs on it gets its own vhost, created with ``rabbitmqctl add_vhost`` and deleted
afterwards, so queues left by one test never meet another. When RabbitMQ is not there the
test is skipped locally and fails in CI (``CI`` set).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

AMQP_BASE = os.environ.get("CONTINUUM_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")


def _ctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def require_rabbitmq() -> None:
    """Skip the test (fail it in CI) when RabbitMQ or ``rabbitmqctl`` is not available."""
    problem = None
    if shutil.which("rabbitmqctl") is None:
        problem = "rabbitmqctl is not installed"
    else:
        try:
            _ctl("list_vhosts")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            problem = f"RabbitMQ is not running ({exc})"
    if problem is not None:
        if os.environ.get("CI"):
            raise RuntimeError(f"{problem}; CI needs it (scripts/services.sh starts it)")
        pytest.skip(problem)


def create_vhost(name: str) -> str:
    """Create the vhost ``name`` with full permissions for guest; return its broker URL."""
    _ctl("add_vhost", name)
    _ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return f"{AMQP_BASE}/{name}"


def delete_vhost(name: str) -> None:
    _ctl("delete_vhost", name)


def queues(vhost: str) -> dict[str, int]:
    """Every queue of ``vhost`` and its messages (ready and unacknowledged)."""
    out = _ctl("list_queues", "-p", vhost, "--no-table-headers", "name", "messages")
    found: dict[str, int] = {}
    for line in out.splitlines():
        name, _, count = line.rpartition("\t")
        if name:
            found[name] = int(count)
    return found


def exchanges(vhost: str) -> set[str]:
    """The names of ``vhost``'s exchanges (the unnamed default one left out)."""
    out = _ctl("list_exchanges", "-p", vhost, "--no-table-headers", "name")
    return {line.strip() for line in out.splitlines() if line.strip()}
