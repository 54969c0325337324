"""Telemetry listeners for the version tests: events become ``test_marks`` rows, written by the
worker process that emitted them, for the test to read back.

``unknown_version:<hash>`` and ``sweep`` per sweep; ``replay_step:<run id>:<worker name>`` per step
(the worker name is the harness's ``CONTINUUM_HOSTNAME``; other processes record nothing).
"""

from __future__ import annotations

import os

from continuum_celery import telemetry
from tests.support.flows import mark


def _record(event: telemetry.TelemetryEvent) -> None:
    if event.name == "unknown_version":
        mark(f"unknown_version:{event.fields.get('version_hash')}")
    elif event.name == "replay_step":
        mark(f"replay_step:{event.run_id}:{os.environ.get('CONTINUUM_HOSTNAME', 'test-process')}")
    else:
        mark(event.name)


if "CONTINUUM_HOSTNAME" in os.environ:  # a harness worker, not the test process (which imports this too)
    telemetry.subscribe(_record, ["unknown_version", "sweep", "replay_step"])
