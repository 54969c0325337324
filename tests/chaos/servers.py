"""Private Redis and PostgreSQL servers that a chaos scenario owns and may crash and restart.

The shared servers of the test machine serve other tests at the same time, so
the scenarios that take a server down start their own on a free port, in a
temporary directory removed afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

from tests.support.stack import wait_until


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _stopped(proc: subprocess.Popen[bytes] | None) -> Iterator[None]:
    """SIGSTOP a server's process group (it runs in a session of its own) for the block, then SIGCONT it."""
    assert proc is not None and proc.poll() is None
    os.killpg(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGCONT)


class PrivateRedis:
    """A ``redis-server`` subprocess without persistence: a restart loses every key."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        log = (self.directory / f"redis-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.starts += 1
        wait_until(self.ping, 30, f"redis-server on port {self.port} to answer")

    def ping(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def crash(self) -> None:
        """SIGKILL the server: every key is gone, every client connection breaks."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def hung(self) -> contextlib.AbstractContextManager[None]:
        """SIGSTOP the server for the block: connections stay open and every command waits unanswered."""
        return _stopped(self.proc)

    def sizes(self) -> dict[str, int]:
        """Every key with its size (members of a list, set, sorted set or hash; 1 for a string)."""
        client = redis.Redis.from_url(self.url, decode_responses=True)
        measure: dict[str, Callable[[str], Any]] = {
            "list": client.llen,
            "set": client.scard,
            "zset": client.zcard,
            "hash": client.hlen,
        }
        try:
            return {
                key: int(measure.get(str(client.type(key)), lambda _: 1)(key)) for key in client.scan_iter(count=1000)
            }
        finally:
            client.close()

    def flushall(self) -> None:
        client = redis.Redis.from_url(self.url)
        try:
            client.flushall()
        finally:
            client.close()

    def close(self) -> None:
        self.crash()


class PrivateRabbitMQ:
    """A RabbitMQ node of its own (no plugins, its own ports and data directory)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory / f"rabbitmq-{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        script = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
        found = str(script) if script.exists() else shutil.which("rabbitmq-server")
        if found is None:
            raise FileNotFoundError("no rabbitmq-server on this machine")
        self.script = found

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        """Start the node and wait until it accepts an AMQP connection."""
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "plugins").write_text("[].")
        env = dict(
            os.environ,
            HOME=str(self.directory),  # the Erlang cookie lives here
            RABBITMQ_NODENAME=f"ctest{self.port}@localhost",
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(free_port()),
            RABBITMQ_MNESIA_BASE=str(self.directory / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.directory / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.directory / "plugins"),
            RABBITMQ_CONFIG_FILE=str(self.directory / "none"),
        )
        log = (self.directory / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [self.script], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        wait_until(self.ping, 90, f"rabbitmq-server on port {self.port} to accept connections", interval=0.5)

    def ping(self) -> bool:
        from kombu import Connection

        try:
            with Connection(self.url, connect_timeout=1) as conn:
                conn.ensure_connection(max_retries=1)
            return True
        except Exception:
            return False

    def hung(self) -> contextlib.AbstractContextManager[None]:
        """SIGSTOP every process of the node for the block (connections stay open, nothing is answered)."""
        return _stopped(self.proc)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        shutil.rmtree(self.directory, ignore_errors=True)


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


class PrivatePostgres:
    """A PostgreSQL cluster of its own (initdb into a temporary directory), started with ``pg_ctl``.

    PostgreSQL refuses to run as root, so as root the commands run as the ``postgres`` user.
    """

    def __init__(self) -> None:
        bindir = _pg_bindir()
        if bindir is None:
            raise FileNotFoundError("no PostgreSQL server binaries (pg_ctl, initdb) on this machine")
        self.bindir = bindir
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="continuum-chaos-pg-"))
        self.data = self.directory / "data"
        self.starts = 0
        try:
            if os.geteuid() == 0:
                shutil.chown(self.directory, "postgres")
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        except (OSError, LookupError, RuntimeError) as exc:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise RuntimeError(f"cannot create a private PostgreSQL cluster: {exc}") from exc

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout}\n{done.stderr}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        # fsync=off only skips flushing the OS cache, which a crash of PostgreSQL alone (not of the
        # machine) keeps. Commits stay synchronous: with synchronous_commit=off a crash would lose
        # transactions the engine was told had committed, which no durable engine can survive.
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.directory / "server.log"), "-w", "start"
        )
        self.starts += 1

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; ``immediate`` is a crash (no clean shutdown, recovery at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def create_database(self, name: str) -> str:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # already down
            self.stop("fast")
        shutil.rmtree(self.directory, ignore_errors=True)
