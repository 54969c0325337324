"""The workloads ``python -m bench`` measures, and the targets continuum is held to in each.

Every system implements each workload its own idiomatic way (see ``celery_chain``,
``continuum_flow``, ``dbos_flow``); a workflow always counts N steps, so steps/s
compares like with like:

- ``sequential``: N trivial steps one after the other;
- ``queued``: the same, every step on its own queue (``bench.acts``) served by a
  second worker pool;
- ``fanout``: N trivial steps in parallel, then a join;
- ``timers``: N steps with a short durable sleep between two of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.config import ACTS_QUEUE, TIMER_SLEEP_S


@dataclass(frozen=True)
class Target:
    """continuum's figure divided by another system's, and the bound that ratio must respect."""

    figure: str
    other: str
    at_least: bool
    bound: float

    def met(self, value: float) -> bool:
        """Whether the ratio ``value`` respects the bound."""
        return value >= self.bound if self.at_least else value <= self.bound

    def describe(self) -> str:
        """The bound as printed next to the ratio, e.g. ``>= 1.50x``."""
        return f"{'>=' if self.at_least else '<='} {self.bound:.2f}x"


@dataclass(frozen=True)
class Workload:
    """One workload: its name, what a workflow does in it, and continuum's targets there."""

    name: str
    description: str
    targets: tuple[Target, ...] = ()

    def target(self, figure: str, other: str) -> Target | None:
        """The target set on ``figure`` against ``other``, if any."""
        return next((t for t in self.targets if t.figure == figure and t.other == other), None)


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "sequential",
            "N trivial steps one after the other",
            (
                Target("steps_per_s", "dbos", True, 2.0),
                Target("steps_per_s", "celery", True, 1.5),
                Target("cpu_ms_per_step", "dbos", False, 0.5),
            ),
        ),
        Workload(
            "queued",
            f"N sequential steps, each on queue {ACTS_QUEUE!r} served by a second worker pool",
            (
                Target("steps_per_s", "celery", True, 0.8),
                Target("p50_ms", "celery", False, 1.5),
            ),
        ),
        Workload(
            "fanout",
            "N trivial steps in parallel, then a join",
            (Target("steps_per_s", "celery", True, 1.0),),
        ),
        Workload("timers", f"N sequential steps with a durable {TIMER_SLEEP_S:g} s sleep between two"),
    )
}


def parse_workloads(text: str) -> list[str]:
    """Comma-separated workload names, in order, without duplicates.

    Raises:
        ValueError: a name is not a known workload, or none is given.
    """
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    if not names:
        raise ValueError(f"no workload given; known: {', '.join(WORKLOADS)}")
    return names
