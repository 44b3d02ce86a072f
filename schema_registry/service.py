"""The registry's operations over a store, with Confluent's error codes (no HTTP here).

:class:`SchemaRegistry` is what the REST app (:mod:`schema_registry.app`) calls;
every expected failure is a :class:`RegistryError` carrying Confluent's HTTP
status and ``error_code``. Compatibility verdicts come from
:mod:`schemas.compatibility` (Apache Avro's checker). Thread-safe: one lock
serialises writes so ids and versions are allocated atomically.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Protocol

from schema_registry.store import (
    RegistryState,
    SubjectVersion,
    config_record,
    schema_record,
)
from schemas.compatibility import (
    CompatibilityLevel,
    SchemaParseError,
    canonical_schema,
    check_compatibility,
    parse_schema_text,
)

__all__ = ["RegistryError", "RegistryStore", "SchemaRegistry"]

_LOGGER = logging.getLogger(__name__)

_MAX_VERSION = 2**31 - 1


class RegistryStore(Protocol):
    """What the registry needs of a store: its state and a durable append."""

    state: RegistryState

    def append(self, records: list[tuple[bytes, bytes | None]]) -> None: ...


class RegistryError(Exception):
    """An error answered as Confluent's ``{"error_code", "message"}``."""

    def __init__(self, http_status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_code = error_code
        self.message = message


def _subject_not_found(subject: str) -> RegistryError:
    return RegistryError(404, 40401, f"Subject '{subject}' not found.")


def _version_not_found(version: object) -> RegistryError:
    return RegistryError(404, 40402, f"Version {version} not found.")


def _schema_not_found(schema_id: int | None = None) -> RegistryError:
    return RegistryError(404, 40403, "Schema not found" if schema_id is None
                         else f"Schema {schema_id} not found")


def _page(items: list[Any], offset: int, limit: int) -> list[Any]:
    """Confluent's pagination: skip ``offset``, at most ``limit`` (negative = all)."""
    items = items[max(offset, 0):]
    return items if limit < 0 else items[:limit]


class SchemaRegistry:
    """Registry operations over a store (:class:`schema_registry.store.KafkaRegistryStore`)."""

    def __init__(self, store: RegistryStore, default_compatibility: str) -> None:
        self.store = store
        self.default_compatibility = CompatibilityLevel(default_compatibility.upper())
        # One lock for everything: writes must allocate ids and versions atomically,
        # and reads are dictionary look-ups, so contention costs nothing measurable.
        self._lock = threading.RLock()

    @property
    def state(self) -> RegistryState:
        return self.store.state

    # -- helpers ------------------------------------------------------------
    @staticmethod
    def _parse_body(body: Any) -> tuple[Any, str]:
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            raise RegistryError(422, 42201, "Invalid schema: request body needs a 'schema' string")
        schema_type = body.get("schemaType") or "AVRO"
        if schema_type != "AVRO":
            raise RegistryError(422, 42201, f"Invalid schema: schemaType {schema_type} is not "
                                "supported by this registry (AVRO only)")
        if body.get("references"):
            raise RegistryError(422, 42201, "Invalid schema: schema references are not supported")
        try:
            parsed = parse_schema_text(body["schema"])
        except SchemaParseError as exc:
            raise RegistryError(422, 42201, f"Invalid schema: {exc}") from None
        return parsed, canonical_schema(parsed)

    def compatibility_for(self, subject: str | None) -> CompatibilityLevel:
        level = self.state.config.get(subject) if subject is not None else None
        return CompatibilityLevel(level or self.state.config.get(None)
                                  or self.default_compatibility)

    @staticmethod
    def _version_number(version: str | int) -> int | None:
        """The version a path names: None for latest (``latest`` or -1); 42202 if invalid."""
        if str(version) in ("latest", "-1"):
            return None
        try:
            number = int(version)
        except ValueError:
            number = 0
        if not 1 <= number <= _MAX_VERSION:
            raise RegistryError(422, 42202, f"The specified version '{version}' is not a valid "
                                "version id. Allowed values are between [1, 2^31-1] and the "
                                "string \"latest\"")
        return number

    def _version(self, subject: str, version: str | int, deleted: bool = False
                 ) -> SubjectVersion:
        """The version named, live only unless ``deleted``; 40401 / 40402 / 42202."""
        number = self._version_number(version)
        candidates = (self.state.all_versions(subject) if deleted
                      else self.state.live_versions(subject))
        if not candidates:
            raise _subject_not_found(subject)
        if number is None:
            return candidates[-1]
        for sv in candidates:
            if sv.version == number:
                return sv
        raise _version_not_found(number)

    def _describe(self, sv: SubjectVersion) -> dict[str, Any]:
        return {"subject": sv.subject, "version": sv.version, "id": sv.schema_id,
                "schema": self.state.schemas[sv.schema_id]}

    def _delete(self, versions: list[SubjectVersion], permanent: bool) -> None:
        self.store.append([schema_record(sv.subject, sv.version, sv.schema_id,
                                         self.state.schemas[sv.schema_id], deleted=True,
                                         permanent=permanent) for sv in versions])

    # -- schemas ------------------------------------------------------------
    def register(self, subject: str, body: Any) -> dict[str, Any]:
        parsed, canonical = self._parse_body(body)
        with self._lock:
            live = self.state.live_versions(subject)
            for sv in live:
                if self.state.schemas[sv.schema_id] == canonical:
                    return {"id": sv.schema_id, "subject": subject, "version": sv.version}
            level = self.compatibility_for(subject)
            previous = [json.loads(self.state.schemas[sv.schema_id]) for sv in live]
            problems = check_compatibility(parsed, previous, level)
            if problems:
                raise RegistryError(
                    409, 409, f"Schema being registered is incompatible with an earlier schema "
                    f"for subject \"{subject}\" ({level.value}): " + "; ".join(problems))
            schema_id = self.state.ids_by_schema.get(canonical) or self.state.next_id
            # Versions keep counting past soft-deleted ones, as Confluent's do.
            version = max(self.state.subjects.get(subject, {}), default=0) + 1
            self.store.append([schema_record(subject, version, schema_id, canonical)])
            _LOGGER.info("registered %s version %d as schema id %d", subject, version, schema_id)
            return {"id": schema_id, "subject": subject, "version": version}

    def lookup(self, subject: str, body: Any, deleted: bool = False) -> dict[str, Any]:
        _parsed, canonical = self._parse_body(body)
        with self._lock:
            versions = self.state.all_versions(subject) if deleted \
                else self.state.live_versions(subject)
            if not versions:
                raise _subject_not_found(subject)
            for sv in versions:
                if self.state.schemas[sv.schema_id] == canonical:
                    return self._describe(sv)
        raise _schema_not_found()

    def schema_by_id(self, schema_id: int, subject: str | None = None) -> str:
        with self._lock:
            text = self.state.schemas.get(schema_id)
            if text is not None and subject and not any(
                    sv.schema_id == schema_id for sv in self.state.all_versions(subject)):
                text = None
        if text is None:
            raise _schema_not_found(schema_id)
        return text

    def _versions_of_id(self, schema_id: int, subject: str | None, deleted: bool
                        ) -> list[SubjectVersion]:
        if schema_id not in self.state.schemas:
            raise _schema_not_found(schema_id)
        subjects = [subject] if subject else sorted(self.state.subjects)
        return [sv for s in subjects for sv in self.state.all_versions(s)
                if sv.schema_id == schema_id and (deleted or not sv.deleted)]

    def subjects_of_id(self, schema_id: int, subject: str | None = None,
                       deleted: bool = False, offset: int = 0, limit: int = -1) -> list[str]:
        """``GET /schemas/ids/{id}/subjects``: subjects with a version using the id."""
        with self._lock:
            found = sorted({sv.subject for sv in self._versions_of_id(schema_id, subject,
                                                                       deleted)})
        return _page(found, offset, limit)

    def versions_of_id(self, schema_id: int, subject: str | None = None,
                       deleted: bool = False, offset: int = 0, limit: int = -1
                       ) -> list[dict[str, Any]]:
        """``GET /schemas/ids/{id}/versions``: ``[{"subject", "version"}]`` using the id."""
        with self._lock:
            found = [{"subject": sv.subject, "version": sv.version}
                     for sv in self._versions_of_id(schema_id, subject, deleted)]
        return _page(found, offset, limit)

    def schemas(self, subject_prefix: str = "", deleted: bool = False,
                latest_only: bool = False, offset: int = 0, limit: int = -1
                ) -> list[dict[str, Any]]:
        """``GET /schemas``: every (subject, version) with its id and schema."""
        with self._lock:
            out: list[dict[str, Any]] = []
            for subject in sorted(s for s in self.state.subjects if s.startswith(subject_prefix)):
                versions = self.state.all_versions(subject) if deleted \
                    else self.state.live_versions(subject)
                if latest_only:
                    versions = versions[-1:]
                out += [self._describe(sv) for sv in versions]
        return _page(out, offset, limit)

    # -- subjects -----------------------------------------------------------
    def subjects(self, deleted: bool = False, deleted_only: bool = False,
                 prefix: str = "", offset: int = 0, limit: int = -1) -> list[str]:
        with self._lock:
            found = []
            for subject in sorted(self.state.subjects):
                if not subject.startswith(prefix):
                    continue
                versions = self.state.all_versions(subject)
                live = any(not sv.deleted for sv in versions)
                if deleted_only:
                    keep = any(sv.deleted for sv in versions)
                else:
                    keep = live or (deleted and bool(versions))
                if keep:
                    found.append(subject)
        return _page(found, offset, limit)

    def versions(self, subject: str, deleted: bool = False, deleted_only: bool = False,
                 offset: int = 0, limit: int = -1) -> list[int]:
        with self._lock:
            every = self.state.all_versions(subject)
            if deleted_only:
                chosen = [sv for sv in every if sv.deleted]
            else:
                chosen = every if deleted else [sv for sv in every if not sv.deleted]
        if not chosen and not (deleted_only and every):
            raise _subject_not_found(subject)
        return _page([sv.version for sv in chosen], offset, limit)

    def get_version(self, subject: str, version: str, deleted: bool = False) -> dict[str, Any]:
        with self._lock:
            return self._describe(self._version(subject, version, deleted))

    def latest_with_metadata(self, subject: str, metadata: dict[str, str],
                             deleted: bool = False) -> dict[str, Any]:
        """``GET /subjects/{s}/metadata``: the latest version whose metadata matches.

        This registry stores no schema metadata: with no keys asked for, that is
        the latest version; with keys, no version matches (40403).
        """
        with self._lock:
            sv = self._version(subject, "latest", deleted)
            if metadata:
                raise RegistryError(404, 40403, f"Schema not found: no version of subject "
                                    f"'{subject}' has metadata {metadata} (this registry "
                                    "stores no schema metadata)")
            return self._describe(sv)

    def delete_subject(self, subject: str, permanent: bool = False) -> list[int]:
        """Soft delete (all live versions), or hard delete of a soft-deleted subject.

        Errors as Confluent's: 40401 unknown subject, 40404 already soft-deleted
        (a hard delete is the only next step), 40405 hard delete before a soft one.
        """
        with self._lock:
            every = self.state.all_versions(subject)
            if not every:
                raise _subject_not_found(subject)
            live = [sv for sv in every if not sv.deleted]
            if permanent:
                if live:
                    raise RegistryError(404, 40405, f"Subject '{subject}' was not deleted "
                                        "first before being permanently deleted")
                self._delete(every, permanent=True)
                _LOGGER.info("hard-deleted subject %s (versions %s)", subject,
                             [sv.version for sv in every])
                return [sv.version for sv in every]
            if not live:
                raise RegistryError(404, 40404, f"Subject '{subject}' was soft deleted. "
                                    "Set permanent=true to delete permanently")
            self._delete(live, permanent=False)
            return [sv.version for sv in live]

    def delete_version(self, subject: str, version: str, permanent: bool = False) -> int:
        """Soft delete of a live version, or hard delete of a soft-deleted one.

        40401 / 40402 / 42202 as for reads; 40406 a soft-deleted version deleted
        softly again; 40407 a hard delete of a version not soft-deleted first.
        """
        with self._lock:
            # A named version is looked for among soft-deleted ones too (40406, not 40402);
            # a soft delete of "latest" means the latest live one.
            named = self._version_number(version) is not None
            sv = self._version(subject, version, deleted=permanent or named)
            if permanent:
                if not sv.deleted:
                    raise RegistryError(404, 40407, f"Subject '{subject}' Version {sv.version} "
                                        "was not deleted first before being permanently "
                                        "deleted")
                self._delete([sv], permanent=True)
                return sv.version
            if sv.deleted:
                raise RegistryError(404, 40406, f"Subject '{subject}' Version {sv.version} was "
                                    "soft deleted. Set permanent=true to delete permanently")
            self._delete([sv], permanent=False)
            return sv.version

    # -- compatibility and config -------------------------------------------
    def test_compatibility(self, subject: str, version: str | None, body: Any,
                           verbose: bool) -> dict[str, Any]:
        """Is ``body``'s schema compatible with ``version`` (None: what the level asks for)?

        A named version that does not exist is 40402 (whether or not the subject
        does); ``latest`` of a subject without versions is compatible, as in Confluent.
        """
        parsed, _canonical = self._parse_body(body)
        with self._lock:
            live = self.state.live_versions(subject)
            level = self.compatibility_for(subject)
            if version is None:
                previous = live  # against all versions the level asks for
            else:
                number = self._version_number(version)
                if number is None:
                    previous = live[-1:]
                else:
                    target = next((sv for sv in live if sv.version == number), None)
                    if target is None:
                        raise _version_not_found(number)
                    previous = [sv for sv in live if sv.version <= number]
                if not level.name.endswith("_TRANSITIVE"):
                    previous = previous[-1:]
            schemas = [json.loads(self.state.schemas[sv.schema_id]) for sv in previous]
        problems = check_compatibility(parsed, schemas, level)
        result: dict[str, Any] = {"is_compatible": not problems}
        if verbose:
            result["messages"] = problems
        return result

    def get_config(self, subject: str | None, default_to_global: bool) -> dict[str, str]:
        with self._lock:
            if subject is not None and subject not in self.state.config and not default_to_global:
                raise RegistryError(404, 40408, f"Subject '{subject}' does not have "
                                    "subject-level compatibility configured")
            return {"compatibilityLevel": self.compatibility_for(subject).value}

    def set_config(self, subject: str | None, body: Any) -> dict[str, str]:
        # Confluent's field is "compatibility"; newer clients' ServerConfig may send
        # "compatibilityLevel" instead.
        level = (body.get("compatibility") or body.get("compatibilityLevel")
                 if isinstance(body, dict) else None)
        try:
            parsed = CompatibilityLevel(str(level).upper())
        except ValueError:
            raise RegistryError(422, 42203, f"Invalid compatibility level {level!r}; expected "
                                f"one of {[c.value for c in CompatibilityLevel]}") from None
        with self._lock:
            self.store.append([config_record(subject, parsed.value)])
        return {"compatibility": parsed.value}

    def delete_config(self, subject: str | None) -> dict[str, str]:
        with self._lock:
            previous = self.compatibility_for(subject).value
            self.store.append([config_record(subject, None)])
        return {"compatibilityLevel": previous}

    # -- mode (fixed: READWRITE) ---------------------------------------------
    def get_mode(self, subject: str | None, default_to_global: bool) -> dict[str, str]:
        """The registry is always READWRITE; a subject has no mode of its own (40409)."""
        if subject is not None and not default_to_global:
            raise RegistryError(404, 40409, f"Subject '{subject}' does not have subject-level "
                                "mode configured")
        return {"mode": "READWRITE"}

    @staticmethod
    def set_mode(body: Any) -> dict[str, str]:
        mode = body.get("mode") if isinstance(body, dict) else None
        if mode not in ("READWRITE", "READONLY", "READONLY_OVERRIDE", "IMPORT"):
            raise RegistryError(422, 42204, f"Invalid mode {mode!r}; expected READWRITE, "
                                "READONLY, READONLY_OVERRIDE or IMPORT")
        if mode != "READWRITE":
            raise RegistryError(422, 42205, f"Mode {mode} is not supported by this registry "
                                "(always READWRITE)")
        return {"mode": "READWRITE"}
