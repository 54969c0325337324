"""The registry of loaded workflow versions.

The :class:`Registry` maps ``(workflow name, version_hash)`` (see
:mod:`continuum_celery.hashing`) to a loaded definition. Several versions of
one workflow are loaded side by side: new runs use :meth:`Registry.current`,
resumed runs look up the exact hash they started on with :meth:`Registry.get`.

A body edited in place behind ``ctx.patched()`` gets a new hash, yet can still
serve runs pinned to the old one: it declares them with
``@workflow(..., compatible_with=("<old hash>", ...))``, and the registry falls
back to it for those hashes (an exact match always wins). ``continuum
replay-check`` verifies the claim against stored histories.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from .errors import DefinitionError, UnknownVersion, UnknownWorkflow
from .hashing import HASH_LENGTH, HASH_PATTERN, place


class VersionedDefinition(Protocol):
    """What the registry needs from a workflow definition.

    Read-only properties, so frozen dataclasses and plain objects both fit.
    """

    @property
    def name(self) -> str:
        """The logical workflow name, shared by all its versions."""

    @property
    def version(self) -> int:
        """The declared version number; the highest one serves new runs."""

    @property
    def version_hash(self) -> str:
        """``version_hash(fn, version)``: what a run is pinned to."""

    @property
    def fn(self) -> Callable[..., Any]:
        """The workflow body."""


class Registry:
    """The workflow versions loaded in this process.

    Writers take a lock and publish fresh dictionaries (copy on write), so
    lookups, which run for every replay, are plain dict reads without locking.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, str], VersionedDefinition] = {}
        self._by_name: dict[str, tuple[VersionedDefinition, ...]] = {}
        self._current: dict[str, VersionedDefinition] = {}
        self._compatible: dict[tuple[str, str], VersionedDefinition] = {}

    def register(self, definition: VersionedDefinition) -> None:
        """Load a workflow version.

        Registering the same ``(name, version_hash)`` again (a module imported
        twice) replaces the earlier entry.

        Raises:
            DefinitionError: another body is loaded under the same name and
                the same version number, or two loaded bodies declare the
                same old hash in ``compatible_with``.
        """
        name, key = definition.name, (definition.name, definition.version_hash)
        with self._lock:
            siblings = self._by_name.get(name, ())
            for other in siblings:
                if other.version == definition.version and other.version_hash != key[1]:
                    raise _duplicate_version(other, definition)
            kept = tuple(d for d in siblings if d.version_hash != key[1])
            versions = tuple(sorted((*kept, definition), key=lambda d: d.version))
            compatible = {k: d for k, d in self._compatible.items() if k[0] != name}
            for d in versions:
                for old_hash in compatible_hashes(d):
                    claimed = compatible.get((name, old_hash))
                    if claimed is not None:
                        raise _double_claim(name, old_hash, claimed, d)
                    compatible[(name, old_hash)] = d
            self._by_key = {**self._by_key, key: definition}
            self._by_name = {**self._by_name, name: versions}
            self._current = {**self._current, name: versions[-1]}
            self._compatible = compatible

    def get(self, name: str, version_hash: str) -> VersionedDefinition:
        """Return the version a run is pinned to (see :meth:`find`).

        Raises:
            UnknownWorkflow: no version of ``name`` is loaded.
            UnknownVersion: ``name`` is loaded, but not with this hash.
        """
        definition = self.find(name, version_hash)
        if definition is not None:
            return definition
        loaded = self._by_name.get(name)
        if loaded is None:
            raise self._unknown_workflow(name)
        listing = ", ".join(f"{d.version_hash} (version {d.version})" for d in loaded)
        raise UnknownVersion(
            f"workflow {name!r} version {version_hash} is not loaded in this worker "
            f"(loaded: {listing}). Deploy a worker whose code has that version, "
            "or run `continuum versions` to see which workers have it.",
            workflow=name,
            version_hash=version_hash,
            loaded=[d.version_hash for d in loaded],
        )

    def current(self, name: str) -> VersionedDefinition:
        """Return the version new runs of ``name`` start on: the highest ``version``.

        Raises:
            UnknownWorkflow: no version of ``name`` is loaded.
        """
        definition = self._current.get(name)
        if definition is None:
            raise self._unknown_workflow(name)
        return definition

    def find(self, name: str, version_hash: str) -> VersionedDefinition | None:
        """Return the definition that serves runs pinned to ``version_hash``, or None.

        The exact version when it is loaded; otherwise a loaded version that
        declares ``version_hash`` in its ``compatible_with``.
        """
        key = (name, version_hash)
        return self._by_key.get(key) or self._compatible.get(key)

    def has(self, name: str, version_hash: str) -> bool:
        """Tell whether runs pinned to ``(name, version_hash)`` can be served here."""
        return self.find(name, version_hash) is not None

    def served(self) -> list[tuple[VersionedDefinition, str]]:
        """Every (definition, hash) this process can serve: own hashes, then declared compatible ones.

        Sorted by workflow name, then version number; this is what a worker
        advertises and which version queues it consumes.
        """
        compatible = self._compatible
        out: list[tuple[VersionedDefinition, str]] = []
        for d in self.definitions():
            out.append((d, d.version_hash))
            out += [
                (d, h)
                for h in compatible_hashes(d)
                if compatible.get((d.name, h)) is d and (d.name, h) not in self._by_key
            ]
        return out

    def names(self) -> list[str]:
        """Return the loaded workflow names, sorted."""
        return sorted(self._by_name)

    def definitions(self) -> list[VersionedDefinition]:
        """Return every loaded version, sorted by name, then version number."""
        by_name = self._by_name
        return [d for name in sorted(by_name) for d in by_name[name]]

    def _unknown_workflow(self, name: str) -> UnknownWorkflow:
        known = ", ".join(self.names()) or "none"
        return UnknownWorkflow(
            f"no workflow named {name!r} is loaded in this process (loaded: {known}). "
            "Check the name, and that the module defining it is imported by the worker "
            "(Celery's `include=` or `imports` setting).",
            workflow=name,
            known=self.names(),
        )


def compatible_hashes(definition: object) -> tuple[str, ...]:
    """The old hashes ``definition`` declares it can serve (``compatible_with``), minus its own."""
    declared: tuple[str, ...] = tuple(getattr(definition, "compatible_with", ()) or ())
    own = getattr(definition, "version_hash", None)
    return tuple(h for h in declared if h != own)


def check_compatible_with(hashes: object, target: str) -> tuple[str, ...]:
    """Validate a ``compatible_with=`` declaration and return it as a tuple.

    Raises:
        DefinitionError: not a list or tuple of version hashes (16 lowercase hex characters).
    """
    if isinstance(hashes, str) or not isinstance(hashes, (list, tuple, frozenset, set)):
        raise DefinitionError(
            f"{target}: compatible_with={hashes!r} must be a tuple of version hashes, "
            'e.g. compatible_with=("3f2a9c0d1e4b5a67",).',
            target=target,
        )
    bad = [h for h in hashes if not isinstance(h, str) or not HASH_PATTERN.fullmatch(h)]
    if bad:
        raise DefinitionError(
            f"{target}: compatible_with holds {bad!r}, which are not version hashes: use the "
            f"{HASH_LENGTH} lowercase hex characters shown by `continuum versions` (or a run's version_hash).",
            target=target,
        )
    return tuple(sorted(set(hashes)))


def _duplicate_version(old: VersionedDefinition, new: VersionedDefinition) -> DefinitionError:
    old_place, new_place = place(old.fn), place(new.fn)
    if old_place == new_place:
        what = f"{new_place} changed but kept version={new.version}"
    else:
        what = f"{old_place} and {new_place} have different bodies but both declare version={new.version}"
    return DefinitionError(
        f"workflow {new.name!r}: {what} (hashes {old.version_hash} and {new.version_hash}). "
        f"Bump `version=` on the new body (e.g. version={new.version + 1}), or give the "
        "old body a different version, so runs started on one keep replaying the code "
        "they started on.",
        workflow=new.name,
        version=new.version,
        places=[old_place, new_place],
        version_hashes=[old.version_hash, new.version_hash],
    )


def _double_claim(name: str, old_hash: str, first: VersionedDefinition, second: VersionedDefinition) -> DefinitionError:
    return DefinitionError(
        f"workflow {name!r}: both version {first.version} ({place(first.fn)}) and version {second.version} "
        f"({place(second.fn)}) declare compatible_with={old_hash!r}; runs pinned to it must have one body. "
        "Keep the declaration on one of them.",
        workflow=name,
        version_hash=old_hash,
        places=[place(first.fn), place(second.fn)],
    )


registry = Registry()
"""The process-wide registry that ``@workflow`` registers into."""

__all__ = [
    "HASH_LENGTH",
    "Registry",
    "VersionedDefinition",
    "check_compatible_with",
    "compatible_hashes",
    "registry",
]
