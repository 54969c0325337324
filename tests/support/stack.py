"""Real worker and beat processes for integration tests, and the per-test stack they share.

A ``Stack`` is one isolated deployment: a fresh migrated PostgreSQL database, a
broker (a key prefix on the test Redis db, or a RabbitMQ vhost of its own), a
Redis key prefix for wake-ups, and a client engine in the test process. Tests
that run on each broker take ``@on_each_broker``. Workers are ``celery worker`` subprocesses;
readiness is the row each one writes to ``continuum_workflow_versions`` at boot.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
BROKERS = ("redis", "rabbitmq")
#: Runs a test that takes the ``stack`` fixture once per broker: Redis, then RabbitMQ (Redis only for wake-ups).
on_each_broker = pytest.mark.parametrize("stack", BROKERS, indirect=True)


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Proc:
    """One celery subprocess with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group (main process and pool children), like a lost machine."""
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self, timeout: float = 30) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it lingers."""
        if self.popen.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Stack:
    """An isolated deployment for one test."""

    database_url: str
    redis_url: str
    tmp: Path
    modules: tuple[str, ...] = ("tests.support.flows",)
    lease_ttl: float = 30.0
    #: Redis of wake-ups and notifications when it is not the broker's (None: the broker's, ``redis_url``).
    wakeup_redis_url: str | None = None
    #: Environment given to every worker and beat process of this stack (on top of the harness's).
    extra_env: dict[str, str] = field(default_factory=dict)
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    procs: list[Proc] = field(default_factory=list)
    engine: Any = None
    #: The broker's URL; None: the test Redis db (with the stack's key prefix).
    amqp_url: str | None = None

    @property
    def broker(self) -> str:
        return "rabbitmq" if self.amqp_url else "redis"

    @property
    def vhost(self) -> str:
        """The RabbitMQ vhost of this stack."""
        assert self.amqp_url is not None, "a Redis-broker stack has no vhost"
        return self.amqp_url.rsplit("/", 1)[1]

    @property
    def broker_url(self) -> str:
        return self.amqp_url or self.redis_url

    def pending_messages(self) -> int:
        """Messages waiting in, or taken but not acknowledged from, any of the stack's broker queues."""
        if self.amqp_url:
            from tests.support.rabbit import queues

            return sum(queues(self.vhost).values())
        client = redis_lib.Redis.from_url(self.redis_url)
        try:
            keys = client.scan_iter(match=f"{self.broker_prefix}*", count=1000)
            waiting = sum(client.llen(k) for k in keys if client.type(k) == b"list")
            return waiting + int(client.hlen(f"{self.broker_prefix}unacked"))
        finally:
            client.close()

    @property
    def broker_prefix(self) -> str:
        return f"ctest:{self.token}:broker:"

    @property
    def result_prefix(self) -> str:
        return f"ctest:{self.token}:results:"

    @property
    def key_prefix(self) -> str:
        return f"ctest:{self.token}:continuum:"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(ROOT),
            CELERY_BROKER_URL=self.broker_url,
            CELERY_RESULT_BACKEND=self.redis_url,
            CONTINUUM_TEST_BROKER_PREFIX=self.broker_prefix,
            CONTINUUM_TEST_RESULT_PREFIX=self.result_prefix,
            CONTINUUM_DATABASE_URL=self.database_url,
            CONTINUUM_REDIS_URL=self.wakeup_redis_url or self.redis_url,
            CONTINUUM_KEY_PREFIX=self.key_prefix,
            CONTINUUM_TEST_MODULES=",".join(self.modules),
            CONTINUUM_LEASE_TTL=str(self.lease_ttl),
        )
        env.update(self.extra_env)
        env.update(extra)
        return env

    def version_queues(self) -> set[str]:
        """The version queues (``<base>.v.<hash>``) the broker holds for this stack.

        RabbitMQ: its queues, through ``rabbitmqctl``. Redis: the queues that have a binding
        (an empty Redis queue is only its binding; its list exists while it holds messages).
        """
        if self.amqp_url:
            from tests.support.rabbit import queues

            return {name for name in queues(self.vhost) if ".v." in name}
        client = redis_lib.Redis.from_url(self.redis_url)
        try:
            prefix = f"{self.broker_prefix}_kombu.binding."
            return {k.decode()[len(prefix) :] for k in client.scan_iter(match=f"{prefix}*.v.*", count=1000)}
        finally:
            client.close()

    def continuum(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``continuum -A tests.support.app ARGS`` against this stack (its broker and journal)."""
        return subprocess.run(
            [str(Path(sys.executable).parent / "continuum"), "-A", "tests.support.app", *args],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def client(self) -> Any:
        """The engine of the test process (starts runs, reads the journal); built once."""
        if self.engine is None:
            from celery import Celery

            from continuum_celery import Continuum

            for module in self.modules:
                __import__(module)
            app = Celery(f"client-{self.token}", broker=self.broker_url, backend=self.redis_url)
            app.conf.broker_transport_options = {"global_keyprefix": self.broker_prefix}
            app.conf.result_backend_transport_options = {"global_keyprefix": self.result_prefix}
            self.engine = Continuum(
                app,
                database_url=self.database_url,
                redis_url=self.wakeup_redis_url or self.redis_url,
                key_prefix=self.key_prefix,
                lease_ttl=self.lease_ttl,
                name=f"test-{self.token}",
            )
        return self.engine

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as handle:  # the child keeps its own descriptor
            popen = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tests.support.app", *args],
                cwd=ROOT,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def worker(
        self,
        name: str | None = None,
        *,
        concurrency: int = 2,
        pool: str = "prefork",
        queues: str | None = None,
        wait: bool = True,
        extra_args: tuple[str, ...] = (),
        **env: str,
    ) -> Proc:
        """Start a ``celery worker`` subprocess; by default wait until it has booted.

        ``extra_args`` go to ``celery worker`` as they are (for example ``("-E",)`` for task events).
        """
        name = name or f"w{len(self.procs)}-{self.token}"
        args = [
            "worker",
            "-n",
            f"{name}@%h",
            "-c",
            str(concurrency),
            "-P",
            pool,
            "-l",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ]
        if queues:
            args += ["-Q", queues]
        args += list(extra_args)
        proc = self._spawn(name, args, self.env(CONTINUUM_HOSTNAME=name, **env))
        if wait:
            wait_until(lambda: self._booted(proc), 60, f"worker {name} to boot:\n{proc.output()[-3000:]}", 0.1)
        return proc

    def beat(self, name: str | None = None, **env: str) -> Proc:
        """Start a ``celery beat`` subprocess (runs the continuum sweep on its schedule)."""
        name = name or f"beat{len(self.procs)}-{self.token}"
        schedule = self.tmp / f"{name}-schedule"
        return self._spawn(name, ["beat", "-l", "INFO", "-s", str(schedule)], self.env(**env))

    def _booted(self, proc: Proc) -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"worker {proc.name} exited with {proc.popen.returncode}:\n{proc.output()[-3000:]}")
        return "ready." in proc.output()

    def create_test_tables(self) -> None:
        """Create the tables activities record their effects in: ``test_effects`` (unique key) and ``test_marks``."""
        self.sql("CREATE TABLE test_effects (key text PRIMARY KEY, at timestamptz DEFAULT now())")
        self.sql("CREATE TABLE test_marks (id serial PRIMARY KEY, name text NOT NULL, at timestamptz DEFAULT now())")

    def sql(self, statement: str, **params: Any) -> list[Any]:
        """Run SQL against the test database and return the rows (for assertions)."""
        engine = sa.create_engine(
            self.database_url.replace("postgresql://", "postgresql+psycopg://"), poolclass=sa.NullPool
        )
        try:
            with engine.begin() as conn:
                result = conn.execute(sa.text(statement), params)
                return list(result) if result.returns_rows else []
        finally:
            engine.dispose()

    def close(self) -> None:
        """Stop the processes and the client engine, then delete the stack's Redis keys.

        Keys go last: a worker, beat or pump still running would write them again.
        """
        for proc in self.procs:
            proc.stop(timeout=15)
        if self.engine is not None:
            self.engine.threads.stop_pump()
            self.engine.stop_watch()
            self.engine.journal.close()
        client = redis_lib.Redis.from_url(self.redis_url)
        try:
            for key in client.scan_iter(match=f"ctest:{self.token}:*", count=1000):
                client.delete(key)
        finally:
            client.close()
