"""The circuit breaker in front of Redis: one failure skips the server for a cool-down, then it is probed."""

from __future__ import annotations

import pytest
import redis

from continuum_celery.redis_guard import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failure_skips_the_server_until_the_cooldown_ends_then_one_call_probes_it() -> None:
    clock, calls = Clock(), []
    breaker = CircuitBreaker("Redis test", cooldown=5.0, clock=clock)

    def hung() -> None:
        calls.append("hung")
        raise redis.TimeoutError("Timeout reading from socket")

    with pytest.raises(redis.TimeoutError):
        breaker.call(hung)
    assert breaker.open
    for _ in range(3):  # skipped at once: the server is not even asked
        with pytest.raises(redis.ConnectionError, match="skipped for another 5.0 s"):
            breaker.call(hung)
    assert calls == ["hung"]

    clock.now += 5.0
    assert not breaker.open
    assert breaker.call(lambda: "pong") == "pong"  # the probe succeeds: the breaker stays closed
    assert breaker.call(lambda: "pong") == "pong"


def test_a_refused_command_is_not_an_outage() -> None:
    breaker = CircuitBreaker("Redis test", cooldown=5.0, clock=Clock())

    def refused() -> None:
        raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")

    with pytest.raises(redis.ResponseError):
        breaker.call(refused)
    assert not breaker.open
