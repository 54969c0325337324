"""The wake-up pump: a daemon thread that sleeps until the next member of a :class:`Wakeups` store is
due (or one is scheduled sooner, by any process), pops what is due and dispatches it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .errors import InvalidArgument
from .wakeups import DEFAULT_BATCH, DEFAULT_POLL_INTERVAL, MIN_SLEEP, Wakeups, check_limit

logger = logging.getLogger(__name__)

#: Delay before a member whose dispatch raised is offered again, in seconds.
DEFAULT_RETRY_DELAY = 1.0
#: Longest back-off of the pump while its store keeps failing, in seconds.
MAX_BACKOFF = 5.0


class WakeupPump:
    """A daemon thread that pops due members and hands each to ``dispatch(member)``.

    The pump sleeps until the earliest due time or ``poll_interval``, whichever
    comes first, so a member fires well under a second late. A dispatch that
    raises is logged and its member scheduled again ``retry_delay`` seconds
    later. A failing store (Redis down, key flushed mid-call) is logged once per
    outage and retried with a growing back-off; the thread never dies of it.
    Anything the pump still misses, the beat sweep recovers from PostgreSQL.

    Args:
        wakeups: the store to drain.
        dispatch: called with each due member, on the pump's thread.
        poll_interval: longest sleep between two looks at the store, in seconds.
        batch: most members popped per round trip.
        clock: epoch-seconds clock, the same one the due times are written with.
        retry_delay: delay before a member whose dispatch raised is offered again.
    """

    def __init__(
        self,
        wakeups: Wakeups,
        dispatch: Callable[[str], None],
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        batch: int = DEFAULT_BATCH,
        clock: Callable[[], float] = time.time,
        retry_delay: float = DEFAULT_RETRY_DELAY,
    ) -> None:
        if poll_interval <= 0:
            raise InvalidArgument("poll_interval must be positive", poll_interval=poll_interval)
        check_limit(batch)
        self._wakeups = wakeups
        self._dispatch = dispatch
        self._poll_interval = poll_interval
        self._batch = batch
        self._clock = clock
        self._retry_delay = retry_delay
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    @property
    def running(self) -> bool:
        """Whether the pump's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the daemon thread; a no-op if it is already running."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="continuum-wakeup-pump", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` seconds for it to finish.

        A dispatch in progress finishes first; members not yet popped stay in the store.
        """
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is threading.current_thread():
            return  # called from a dispatch callback: the loop ends after this batch
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("wake-up pump did not stop within %.1fs", timeout)
            else:
                self._thread = None

    def wake(self) -> None:
        """Cut the current sleep short, e.g. right after scheduling a member due now."""
        self._wake.set()

    def run_once(self) -> int:
        """Pop one batch of due members and dispatch them; return how many dispatched cleanly.

        Raises:
            Exception: whatever the store raises while popping (e.g. ``redis.ConnectionError``).
                Errors of ``dispatch`` are logged, not raised.
        """
        return self._drain()[1]

    def _reschedule(self, member: str) -> None:
        try:
            self._wakeups.schedule(member, self._clock() + self._retry_delay)
        except Exception:
            # The member is gone from the store now; the beat sweep re-derives it.
            logger.warning("could not re-schedule wake-up %r; the sweep will recover it", member)

    def _loop(self) -> None:
        backoff = self._poll_interval
        while not self._stop.is_set():
            # Cleared before looking, so a wake() during the look cuts the next sleep short.
            self._wake.clear()
            try:
                popped, _ = self._drain()
                # A full batch suggests more is due: go again without sleeping.
                delay = 0.0 if popped >= self._batch else self._sleep_hint()
            except Exception:
                self._note_failure()
                delay, backoff = backoff, min(backoff * 2, MAX_BACKOFF)
            else:
                self._note_recovery()
                backoff = self._poll_interval
            if delay > 0:
                self._sleep(delay)

    def _drain(self) -> tuple[int, int]:
        """Pop one batch and dispatch it; return (popped, dispatched cleanly)."""
        members = self._wakeups.pop_due(self._clock(), self._batch)
        dispatched = 0
        for member in members:
            try:
                self._dispatch(member)
            except Exception:
                logger.exception("wake-up dispatch of %r failed; retrying it shortly", member)
                self._reschedule(member)
            else:
                dispatched += 1
        return len(members), dispatched

    def _sleep(self, delay: float) -> None:
        """Wait for the next due member, a newly scheduled one or ``stop()``, at most ``delay`` seconds."""
        if self._failing:  # a store that keeps failing is not asked to block
            self._wake.wait(delay)
            return
        try:
            self._wakeups.wait(delay)
        except Exception:
            self._note_failure()
            self._wake.wait(delay)

    def _sleep_hint(self) -> float:
        next_due = self._wakeups.next_due()
        if next_due is None:
            return self._poll_interval
        return max(MIN_SLEEP, min(self._poll_interval, next_due - self._clock()))

    def _note_failure(self) -> None:
        if not self._failing:
            self._failing = True
            logger.warning(
                "wake-up store unavailable; backing off (timers fall back to the sweep)",
                exc_info=True,
            )

    def _note_recovery(self) -> None:
        if self._failing:
            self._failing = False
            logger.info("wake-up store available again")
