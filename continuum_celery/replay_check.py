"""Replay stored histories against the current code, writing nothing.

Before a deploy, CI replays recent runs' journals (from the database, or from
a JSON export) through the workflow bodies the new code loads, and reports
every run the code can no longer reproduce:

* a command the body issues differs from the one the history holds
  (:class:`~continuum_celery.errors.NondeterminismError`), or the body ends
  while the history still holds commands;
* a finished run ends differently: another result, another error, or the body
  waits or issues new commands where the history ended;
* an unfinished run is pinned to a version the code no longer loads (it would
  wait forever). A *finished* run on such a version is skipped: it never
  replays again.

A run pinned to an old hash is replayed with the body that declares that hash
in ``@workflow(compatible_with=...)``: this is how that claim is verified.

The database is opened read-only (a read-only transaction on PostgreSQL,
``query_only`` on SQLite), so a check cannot write even by mistake.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .context import RunInfo, context_factory
from .errors import InvalidArgument, NondeterminismError
from .events import TERMINAL_EVENTS, Event, Kind
from .journal.sql import SQLJournal
from .replay import Cancelled, Complete, ContinueAsNew, Decision, Execution, Fail
from .serialization import dumps
from .states import TERMINAL
from .versioning import Registry
from .versioning import registry as default_registry

#: Runs read from a database when no ``limit`` is given (the newest first).
DEFAULT_LIMIT = 1000

_RUN_FIELDS = ("id", "workflow", "version_hash", "version", "state", "input", "result", "error", "stuck_reason")
_EXPECTED_END = {
    Kind.RUN_COMPLETED: Complete,
    Kind.RUN_FAILED: Fail,
    Kind.RUN_CANCELLED: Cancelled,
    Kind.RUN_CONTINUED: ContinueAsNew,
}


@dataclass(frozen=True)
class History:
    """One run's row (the fields a replay needs) and its events in order."""

    run: Mapping[str, Any]
    events: list[Event]

    @property
    def run_id(self) -> str:
        return str(self.run["id"])

    @property
    def finished(self) -> bool:
        """Whether the run had ended when the history was read."""
        return self.run.get("state") in TERMINAL

    def to_json(self) -> dict[str, Any]:
        """The export record: ``{"run": {...}, "events": [{seq, kind, command_id, name, payload}, ...]}``."""
        return {
            "run": {k: self.run.get(k) for k in _RUN_FIELDS},
            "events": [
                {"seq": e.seq, "kind": e.kind.value, "command_id": e.command_id, "name": e.name, "payload": e.payload}
                for e in self.events
            ],
        }

    @classmethod
    def from_json(cls, record: Any, where: str = "record") -> History:
        """Rebuild a history from an export record.

        Raises:
            InvalidArgument: the record lacks a field or holds an unknown event kind.
        """
        fix = "export histories with continuum_celery.replay_check.export_history"
        if not isinstance(record, Mapping) or not isinstance(record.get("run"), Mapping):
            raise InvalidArgument(f"{where} is not {{'run': {{...}}, 'events': [...]}}; {fix}.")
        run = record["run"]
        missing = [k for k in ("id", "workflow", "version_hash", "state") if not isinstance(run.get(k), str)]
        if missing or not isinstance(record.get("events"), list):
            what = f"run fields {missing}" if missing else "an 'events' list"
            raise InvalidArgument(f"{where} lacks {what}; {fix}.")
        out: list[Event] = []
        for i, e in enumerate(record["events"]):
            try:
                if not isinstance(e["payload"], Mapping):
                    raise TypeError(f"payload {e['payload']!r} is not an object")
                out.append(Event(int(e["seq"]), Kind(e["kind"]), e.get("command_id"), e.get("name"), e["payload"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidArgument(f"{where}, event {i}: not a journal event ({exc!r}); {fix}.") from None
        return cls(dict(run), out)


@dataclass(frozen=True)
class Verdict:
    """What replaying one history showed: ``ok``, ``failed`` or ``skipped``, and why."""

    run_id: str
    workflow: str
    version_hash: str
    status: str
    problem: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class ReplayReport:
    """The verdicts of one check."""

    verdicts: list[Verdict] = field(default_factory=list)

    def _with(self, status: str) -> list[Verdict]:
        return [v for v in self.verdicts if v.status == status]

    @property
    def failures(self) -> list[Verdict]:
        return self._with("failed")

    @property
    def ok(self) -> bool:
        """True when no history failed."""
        return not self.failures

    def summary(self) -> str:
        """One line: how many runs were checked, reproduced, failed and skipped."""
        return (
            f"{len(self.verdicts)} run(s) checked: {len(self._with('ok'))} reproduced, "
            f"{len(self.failures)} failed, {len(self._with('skipped'))} skipped"
        )

    def format(self) -> str:
        """Every failure on its own line, then the summary."""
        lines = [f"FAILED {v.run_id} ({v.workflow} {v.version_hash}): {v.problem}" for v in self.failures]
        return "\n".join([*lines, self.summary()])

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": len(self.verdicts),
            "failed": len(self.failures),
            "skipped": len(self._with("skipped")),
            "runs": [v.to_json() for v in self.verdicts],
        }


# ---- reading ---------------------------------------------------------------------------


def read_histories(database_url: str, *, workflow: str | None = None, limit: int = DEFAULT_LIMIT) -> list[History]:
    """Read the newest ``limit`` runs (of ``workflow``, if given) and their events, read-only.

    Raises:
        SchemaNotMigrated: the database has no continuum tables. JournalUnavailable: it cannot be reached.
        InvalidArgument: ``limit`` is not positive.
    """
    if limit < 1:
        raise InvalidArgument(f"limit={limit}: read at least one run.")
    # Any migrated revision will do: replay-check reads copies of older deployments too.
    journal = SQLJournal(database_url, read_only=True, check=False)
    try:
        stored = journal.recent_histories(workflow=workflow, limit=limit)
    finally:
        journal.close()
    return [History({k: getattr(r, k) for k in _RUN_FIELDS}, history) for r, history in stored]


def export_history(
    database_url: str, path: str | os.PathLike[str], *, workflow: str | None = None, limit: int = DEFAULT_LIMIT
) -> int:
    """Write the newest runs' histories to ``path`` as JSON (for ``replay-check --from-file``); return how many."""
    histories = read_histories(database_url, workflow=workflow, limit=limit)
    Path(path).write_text(json.dumps([h.to_json() for h in histories], indent=1, default=str))
    return len(histories)


def load_histories(path: str | os.PathLike[str]) -> list[History]:
    """Read histories exported by :func:`export_history`.

    Raises:
        InvalidArgument: the file is not such an export.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read histories from {os.fspath(path)!r}: {exc}") from None
    if not isinstance(data, list):
        raise InvalidArgument(
            f"{os.fspath(path)!r} holds a JSON {type(data).__name__}, not a list of "
            "{'run': ..., 'events': [...]} records; export histories with export_history()."
        )
    return [History.from_json(r, f"{os.fspath(path)} record {i}") for i, r in enumerate(data)]


# ---- checking --------------------------------------------------------------------------


def check_history(history: History, registry: Registry | None = None) -> Verdict:
    """Replay one history through the definition that serves its version, in memory."""
    reg = registry if registry is not None else default_registry
    run = history.run
    name, version_hash = str(run["workflow"]), str(run["version_hash"])

    def verdict(status: str, problem: str = "") -> Verdict:
        return Verdict(history.run_id, name, version_hash, status, problem)

    definition = reg.find(name, version_hash)
    if definition is None:
        loaded = ", ".join(d.version_hash for d in reg.definitions() if d.name == name) or "none"
        if history.finished:
            return verdict("skipped", f"finished on version {version_hash}, which this code does not load")
        return verdict(
            "failed",
            f"the run is {run.get('state')} and pinned to version {version_hash}, which this code does not load "
            f"(loaded versions of {name}: {loaded}); it would never resume. Keep that body (its own version=) "
            "or declare the hash in @workflow(compatible_with=...) on a body that replays it.",
        )
    info = RunInfo(history.run_id, name, version_hash)
    execution = Execution(
        definition.fn,
        run.get("input"),
        context_factory(info),
        saga=bool(getattr(definition, "saga", False)),
        run_id=history.run_id,
    )
    try:
        decision = execution.advance(history.events, datetime.now(timezone.utc))
        leftover = execution.peek_command()
    except NondeterminismError as exc:
        return verdict("failed", str(exc))
    except Exception as exc:
        return verdict("failed", f"the replay raised {type(exc).__name__}: {exc}")
    finally:
        execution.close()
    if leftover is not None:
        return verdict(
            "failed",
            f"the code {'ended' if decision.outcome else 'stopped'} before event {leftover.seq}, where the history "
            f"holds {leftover.kind.value} {leftover.name!r}: it no longer issues that command.",
        )
    end = next((e for e in reversed(history.events) if e.kind in TERMINAL_EVENTS), None)
    problem = _compare_end(end, decision) if end is not None else ""
    return verdict("failed", problem) if problem else verdict("ok")


def _compare_end(end: Event, decision: Decision) -> str:
    """Why the replay's end differs from the recorded one ('' when it does not)."""
    recorded = f"the history ended with {end.kind.value} at event {end.seq}"
    if decision.commands:
        issued = ", ".join(f"{c.kind.value} {c.name!r}" for c in decision.commands[:3])
        return f"{recorded}, but the code goes on and issues {issued}."
    outcome = decision.outcome
    if outcome is None:
        return f"{recorded}, but the code waits for something more."
    if not isinstance(outcome, _EXPECTED_END[end.kind]):
        return f"{recorded}, but the code ends with {_describe(outcome)}."
    if isinstance(outcome, Complete) and dumps(outcome.result) != dumps(end.payload.get("result")):
        return (
            f"{recorded} (result {_short(end.payload.get('result'))}), but the code returns {_short(outcome.result)}."
        )
    if isinstance(outcome, (Fail, Cancelled)):
        old, new = end.payload.get("error") or {}, outcome.error
        keys = ("module", "type", "message")
        if any(old.get(k) != new.get(k) for k in keys):
            return f"{recorded} ({_error(old)}), but the code fails with {_error(new)}."
    return ""


def _describe(outcome: object) -> str:
    if isinstance(outcome, Complete):
        return f"a result {_short(outcome.result)}"
    if isinstance(outcome, (Fail, Cancelled)):
        return f"{type(outcome).__name__.lower()} {_error(outcome.error)}"
    return "continue-as-new"


def _error(error: Mapping[str, Any]) -> str:
    return f"{error.get('type', '?')}: {error.get('message', '')}"


def _short(value: Any, limit: int = 200) -> str:
    text = dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_histories(histories: Iterable[History], registry: Registry | None = None) -> ReplayReport:
    """Replay every history; the report lists each verdict."""
    return ReplayReport([check_history(h, registry) for h in histories])


__all__ = [
    "DEFAULT_LIMIT",
    "History",
    "ReplayReport",
    "Verdict",
    "check_histories",
    "check_history",
    "export_history",
    "load_histories",
    "read_histories",
]
