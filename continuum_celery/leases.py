"""Keeps the leases of steps in progress alive: one renewer thread per process."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import LeaseLost
from .journal.base import Journal
from .journal.records import Lease

log = logging.getLogger(__name__)


class LeaseRenewer:
    """Renews every held lease at a third of its TTL, so a long step is never taken over."""

    def __init__(self, journal: Journal, ttl: float) -> None:
        self._journal = journal
        self._ttl = ttl
        self._held: dict[tuple[str, int], float] = {}
        self._lost: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def hold(self, lease: Lease) -> Iterator[None]:
        """Renew ``lease`` in the background for the duration of the block."""
        key = (lease.run_id, lease.token)
        with self._lock:
            self._held[key] = time.monotonic()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="continuum-lease-renewer", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(key, None)
                self._lost.discard(key)

    def lost(self, lease: Lease) -> bool:
        """True if a renewal found the lease gone (the step should stop writing)."""
        return (lease.run_id, lease.token) in self._lost

    def _loop(self) -> None:
        interval = self._ttl / 3
        while True:
            self._wake.wait(interval / 2)
            now = time.monotonic()
            with self._lock:
                due = [k for k, at in self._held.items() if now - at >= interval and k not in self._lost]
            for run_id, token in due:
                try:
                    self._journal.renew(Lease(run_id, token, ""), self._ttl)
                    with self._lock:
                        if (run_id, token) in self._held:
                            self._held[(run_id, token)] = now
                except LeaseLost:
                    with self._lock:
                        self._lost.add((run_id, token))
                except Exception:
                    log.warning("lease renewal of run %s failed; will retry", run_id, exc_info=True)
